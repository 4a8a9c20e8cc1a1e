from datetime import datetime
from datetime import timedelta

from legato.compat.coworks import BranchTechMicroServiceOperator
from legato.compat.coworks import TechMicroServiceOperator
from legato.compat.coworks import biz

DEFAULT_ARGS = {
    'retries': 1,
    'retry_delay': timedelta(minutes=5),
    'email': "gdoumenc@neorezo.io",
    'email_on_failure': True,
    'email_on_retry': False,
}


@biz(
    default_args=DEFAULT_ARGS,
    tags=['coworks', 'sample'],
    start_date=datetime(2022, 1, 1),
    schedule_interval=None,
    catchup=False,
    render_template_as_native_obj=True,
)
def my_first_biz(data):
    create_invoice = TechMicroServiceOperator(
        task_id='create_invoice',
        cws_name='neorezo-billing_invoice-eshop',
        method='POST',
        entry="/invoice",
        json="{{ dag_run.conf['data'] }}",
        raise_400_errors=False,
    )

    check_invoice = BranchTechMicroServiceOperator(
        task_id='check_invoice',
        cws_task_id='create_invoice',
        on_success="sent_to_customer",
        on_failure="mail_error",
    )

    sent_to_customer = TechMicroServiceOperator(
        task_id='sent_to_customer',
        cws_name='neorezo-mail',
        method='POST',
        entry="/send",
        json={
            'to': "{{ dag_run.conf['data']['customer'] }}",
            'invoice': "{{ ti.xcom_pull(task_ids='create_invoice') }}",
        },
    )

    mail_error = TechMicroServiceOperator(
        task_id='mail_error',
        cws_name='neorezo-mail',
        method='POST',
        entry="/send",
        json={
            'to': "billing@neorezo.io",
            'error': "{{ ti.xcom_pull(task_ids='create_invoice') }}",
        },
    )

    create_invoice >> check_invoice >> [sent_to_customer, mail_error]


my_first_biz = my_first_biz()
