select detection_key, confidence
from {{ ref('fct_image_detections') }}
where confidence < 0 or confidence > 1
