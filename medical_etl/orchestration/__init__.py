"""Other front doors to the same jobs: optional orchestrators over :mod:`medical_etl.jobs`.

Nothing in medical_etl imports this package; :mod:`.dagster` needs the ``dagster`` extra
(``pip install '.[dagster]'``). Make and cron (:func:`medical_etl.jobs.run_job`) stay the default.
"""
