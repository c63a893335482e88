"""Stage 4, enrich: YOLO object detection on the loaded photos, stored in the warehouse.

- :mod:`.stage`: ``run_yolo_enrichment`` (which photos are new, the results written in batches);
- :mod:`.detection`: the model and the decode -> letterbox -> infer pipeline;
- :mod:`.images`: reading photos confined to the lake, decoding with size limits.
"""
from medical_etl.enrich.stage import run_yolo_enrichment

__all__ = ["run_yolo_enrichment"]
