"""Operations around the pipeline: status, backup/restore, schedule, report, doctor checks."""
