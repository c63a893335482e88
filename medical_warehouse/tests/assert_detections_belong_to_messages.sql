-- Every raw detection must belong to a loaded message. A daily build checks the detections stored since
-- the last build (macros/test_scope.sql).
select d.detection_key
from {{ ref('stg_yolo_detections') }} as d
left join {{ ref('fct_messages') }} as m on m.message_key = d.message_key
where m.message_key is null
  and {{ changed_rows('d.detected_at') }}
