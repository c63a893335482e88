"""What ``dagster dev -m medical_etl.orchestration.dagster.defs`` loads (``make dagster``): the
definitions over the settings of the environment and ``.env``, as the CLI reads them."""
from medical_etl.orchestration.dagster.repository import build_definitions

defs = build_definitions()
