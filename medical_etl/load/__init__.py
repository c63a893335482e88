"""Stage 2, load (``stage.py``): the lake's message files into ``raw.telegram_messages``, validated
(``validate.py``) and written in batches (``writer.py``), with the columns the lake's record
description gives (``columns.py``) and named rows for the bookkeeping (``records.py``)."""
from medical_etl.load.columns import COLUMNS, FIELDS
from medical_etl.load.stage import load_raw_to_postgres
from medical_etl.load.validate import Reject, check_image_path, validate
from medical_etl.load.writer import LoadError

__all__ = ["COLUMNS", "FIELDS", "LoadError", "Reject", "check_image_path", "load_raw_to_postgres", "validate"]
