"""Stage 3, transform: the catalogue (``catalogue/``: the offers of new post texts and what their
products are), then the dbt project ``medical_warehouse/`` (``stage.py``); dbt's plumbing in
``dbt.py``, what the last build saw in ``state.py``."""
from medical_etl.transform.dbt import PROJECT_DIR, TransformError, writes_in_place
from medical_etl.transform.stage import (
           IMAGE_MODELS,
           build_image_models,
           run_dbt_transformations,
           slowest_models,
)
from medical_etl.transform.state import note_image_models_built

__all__ = ["IMAGE_MODELS", "PROJECT_DIR", "TransformError", "build_image_models", "note_image_models_built",
           "run_dbt_transformations", "slowest_models", "writes_in_place"]
