from datetime import datetime
from datetime import timedelta

from legato.compat.coworks import TechMicroServiceAsyncGroup
from legato.compat.coworks import TechMicroServiceOperator
from legato.compat.coworks import biz
from legato.compat.coworks import get_current_context
from legato.compat.coworks import task

DEFAULT_ARGS = {
    'retries': 1,
    'retry_delay': timedelta(minutes=5),
    'email': "gdoumenc@neorezo.io",
    'email_on_failure': True,
    'email_on_retry': False,
}


# noinspection PyTypeChecker,PyArgumentList
@biz(
    default_args=DEFAULT_ARGS,
    tags=['air-et-sante', 'send', 'orders'],
    start_date=datetime(2023, 1, 1),
    schedule_interval='@daily',
    catchup=False,
)
def first():
    simple = TechMicroServiceAsyncGroup(
        'simple',
        api_id="xxxx",
        stage="dev",
        token="token",
        method='GET',
        entry='/',
    )

    @task()
    def print_result():
        context = get_current_context()
        ti = context["ti"]
        result = ti.xcom_pull(task_ids='simple.read')
        print(result)

    simple >> print_result


first = first()
