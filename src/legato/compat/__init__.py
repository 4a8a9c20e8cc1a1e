"""The seeds' own APIs, building Legato's models: DAG files and task code written for those systems
run with only their import lines changed (`legato.compat.coworks`, ...)."""
