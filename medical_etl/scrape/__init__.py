"""Stage 1, scrape: Telegram channels (or Telegram Desktop exports) to the JSON data lake.

- :mod:`.stage`: ``scrape_telegram_data`` (any Telethon-like client in, lake files and per-channel
  state out) and ``import_telegram_export``;
- :mod:`.telegram`: the real client (credentials, session file, login);
- :mod:`.standin`: a stand-in client serving recorded posts through Telethon's types, and the
  Desktop-export reader;
- :mod:`.channels`: the configured channel list;
- :mod:`.source`: which client a run uses (``TELEGRAM_SOURCE``), opened and closed for it.
"""
from medical_etl.scrape.stage import import_telegram_export, scrape_telegram_data

__all__ = ["scrape_telegram_data", "import_telegram_export"]
