"""Stage 1, scrape: Telegram channels -> the JSON data lake, incremental and fault-tolerant.

``scrape_telegram_data`` takes any client with Telethon's async ``get_entity``,
``iter_messages`` and ``download_media``: the real ``TelegramClient`` in
production, a stand-in (:mod:`medical_etl.scrape.standin`) in tests and the demo.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from telethon import errors
from telethon.tl import types
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from medical_etl import lake
from medical_etl.runlog import new_run_id
from medical_etl.scrape.channels import parse_channels

log = logging.getLogger(__name__)

# Errors after which retrying the same request is pointless for this channel.
# Telethon raises ValueError("Cannot find any entity ...") for unknown names.
CHANNEL_ERRORS = (
    errors.ChannelPrivateError, errors.ChannelInvalidError, errors.UsernameInvalidError,
    errors.UsernameNotOccupiedError, errors.RPCError, ValueError,
)
# Transient: the network, and Telegram's own server-side failures (RPC 5xx, -503 timeouts),
# retried with backoff before a channel is given up for this run.
NETWORK_ERRORS = (ConnectionError, TimeoutError, asyncio.TimeoutError, errors.ServerError, errors.TimedOutError)
BATCH = 200
MAX_MESSAGE_ID = 2**31 - 1  # Telegram's message ids are 32-bit: a larger one cannot even be requested


class FloodWaitTooLong(Exception):
    def __init__(self, seconds: int):
        super().__init__(f"Telegram asked to wait {seconds} s, above the cap")
        self.seconds = seconds


class ResumePointError(ValueError):
    """A channel's resume point (``state/<channel>.json``) cannot be used: it fails that channel only."""


@dataclass
class ChannelResult:
    new_messages: int = 0
    updated_messages: int = 0
    photos_saved: int = 0
    last_message_id: int = 0
    flood_waits: int = 0
    retries: int = 0
    error: str | None = None
    warning: str | None = None
    files: set[str] = field(default_factory=set)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "files"}


def media_type(msg) -> str | None:
    """photo, video, video_message, animation, voice, audio, sticker, document, or the Telethon
    media name (webpage, geo, contact, poll, ...); None for a post without media."""
    media = getattr(msg, "media", None)
    if media is None:
        return None
    if isinstance(media, types.MessageMediaPhoto):
        return "photo"
    if isinstance(media, types.MessageMediaDocument):
        doc = getattr(media, "document", None)
        attrs = getattr(doc, "attributes", None) or []
        kinds = {type(a) for a in attrs}
        if types.DocumentAttributeSticker in kinds:
            return "sticker"
        if types.DocumentAttributeAnimated in kinds:
            return "animation"
        for a in attrs:
            if isinstance(a, types.DocumentAttributeVideo):
                return "video_message" if a.round_message else "video"
            if isinstance(a, types.DocumentAttributeAudio):
                return "voice" if a.voice else "audio"
        mime = getattr(doc, "mime_type", "") or ""
        return "video" if mime.startswith("video/") else "document"
    return type(media).__name__.removeprefix("MessageMedia").lower()


def forward_origin(msg) -> tuple[int | None, str | None]:
    """(peer id, name) of where a forwarded post came from; (None, None) for an original post."""
    fwd = getattr(msg, "fwd_from", None)
    if fwd is None:
        return None, None
    peer = getattr(fwd, "from_id", None)
    peer_id = next((getattr(peer, a) for a in ("channel_id", "user_id", "chat_id") if hasattr(peer, a)), None)
    name = getattr(fwd, "from_name", None) or getattr(fwd, "post_author", None)
    if name is None:  # Telethon resolves the origin's entity when it is in the session's cache
        forward = getattr(msg, "forward", None)
        origin = getattr(forward, "chat", None) or getattr(forward, "sender", None)
        name = getattr(origin, "title", None) or getattr(origin, "username", None)
    return peer_id, name


def media_status(msg, image_path: str | None, unavailable: str | None) -> str | None:
    """What became of a post's media file: None (no media), ``saved`` (in the lake),
    ``not_included`` (a Telegram Desktop export left it out), ``missing`` (an export names a file its
    folder lacks), ``refused`` (an export named a file outside its folder, or not a regular file) or
    ``not_saved`` (a kind the lake does not keep, or not downloaded)."""
    if getattr(msg, "media", None) is None:
        return None
    if image_path:
        return "saved"
    return unavailable or "not_saved"


def expected_photo_size(msg) -> int | None:
    photo = getattr(getattr(msg, "media", None), "photo", None)
    best = None
    for s in getattr(photo, "sizes", None) or []:
        size = getattr(s, "size", None)
        if size is None and getattr(s, "sizes", None):  # PhotoSizeProgressive
            size = max(s.sizes)
        if isinstance(size, int) and (best is None or size > best):
            best = size
    return best


def message_record(msg, entity, image_path: str | None, scraped_at: str,
                   media_unavailable: str | None = None) -> dict:
    """The lake record of one message: the same fields whether it came from the API or an export."""
    reply_to = getattr(msg, "reply_to", None)
    replies = getattr(msg, "replies", None)
    fwd_id, fwd_name = forward_origin(msg)
    return {
        "channel_username": entity.username,
        "channel_title": getattr(entity, "title", None),
        "channel_id": entity.id,
        "message_id": msg.id,
        "date": lake.iso_utc(msg.date),
        "text": msg.message or "",
        "views": msg.views,
        "forwards": msg.forwards,
        "replies": getattr(replies, "replies", None),
        "edit_date": lake.iso_utc(getattr(msg, "edit_date", None)),
        "grouped_id": getattr(msg, "grouped_id", None),
        "reply_to_msg_id": getattr(reply_to, "reply_to_msg_id", None),
        "media_type": media_type(msg),
        "media_status": media_status(msg, image_path, media_unavailable),
        "forward_from_id": fwd_id,
        "forward_from_name": fwd_name,
        "image_path": image_path,
        "scraped_at": scraped_at,
    }


def _same(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "scraped_at"} == {k: v for k, v in b.items() if k != "scraped_at"}


class _ChannelScraper:
    def __init__(self, client, lake_dir: Path, name: str, opts: dict, result: ChannelResult):
        self.client, self.lake_dir, self.name, self.opts = client, lake_dir, name, opts
        self.result = result
        self.scraped_at = datetime.now(timezone.utc).isoformat()

    async def run(self) -> None:
        entity = await self.client.get_entity(self.name)
        username = entity.username or self.name
        last = self._resume_point(username)
        self.result.last_message_id = last
        refresh_days = self.opts["refresh_days"]
        if refresh_days and last:
            since = datetime.now(timezone.utc) - timedelta(days=refresh_days)
            await self._pass(entity, username, dict(offset_date=since, max_id=last + 1), advance=False)
        kwargs = dict(min_id=0 if self.opts["full_resync"] else last)
        if self.opts["since"] and not last:
            kwargs["offset_date"] = self.opts["since"]
        if not await self._pass(entity, username, kwargs, advance=True) and kwargs["min_id"]:
            await self._rewind_if_beyond_newest(entity, username, last)

    def _state_path(self, username: str) -> Path:
        return self.lake_dir / lake.STATE_DIR / f"{username}.json"

    def _resume_point(self, username: str) -> int:
        """The channel's stored ``last_message_id``; :class:`ResumePointError`, naming the file and what
        to do, when the file cannot be read or holds no Telegram message id (a 32-bit number >= 0)."""
        try:
            state = lake.read_state(self.lake_dir, username)
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8 (binary), not JSON (empty)
            problem = f"cannot be read ({type(exc).__name__}: {exc})"
        else:
            last = state.get("last_message_id") if isinstance(state, dict) else None
            if type(last) is int and 0 <= last <= MAX_MESSAGE_ID:  # not a bool, a float or a string
                return last
            problem = f"holds {json.dumps(state)[:80]}, not {{\"last_message_id\": <a message id>}}"
        stored = self._stored_top(username)
        fix = (f'write {{"last_message_id": {stored}}} (the newest message of {username} in the lake) or delete it '
               "to read the channel's whole history again" if stored else
               "delete it to read the channel's history from the start (the lake holds none of its messages)")
        raise ResumePointError(f"resume point {self._state_path(username)} {problem}: {fix}")

    def _stored_top(self, username: str) -> int:
        """The newest message id the lake holds for the channel (0: none): ids grow with dates, so it is
        in the channel's latest partition."""
        parts = sorted((self.lake_dir / lake.MESSAGES_DIR).glob(f"*/{username}.json"), reverse=True)
        try:
            return max(lake.read_partition(parts[0]), default=0) if parts else 0
        except (OSError, ValueError, KeyError, TypeError):  # a damaged partition: assume nothing is stored
            return 0

    async def _rewind_if_beyond_newest(self, entity, username: str, last: int) -> None:
        """Nothing came after ``last``. If the channel's newest message is older and the lake does not
        hold ``last`` either (a deleted newest post would explain the first, not both), the resume point
        is wrong: every post until the channel caught up would be skipped. Rewind it to the lake's newest
        message of the channel, read on from there, and say so in the channel's ``warning``."""
        newest = 0
        async for msg in self.client.iter_messages(entity, limit=1):
            newest = msg.id
        if newest >= last:
            return
        stored = self._stored_top(username)
        if stored >= last:
            return
        self.result.warning = (f"resume point {self._state_path(username)}: last_message_id {last} is beyond the "
                               f"channel's newest message ({newest}) and the lake's ({stored}); rewound to {stored}")
        log.warning("channel %s: %s", self.name, self.result.warning)
        lake.write_state(self.lake_dir, username, {"last_message_id": stored})
        self.result.last_message_id = stored
        await self._pass(entity, username, dict(min_id=stored), advance=True)

    async def _pass(self, entity, username: str, kwargs: dict, advance: bool) -> int:
        """Read the messages ``kwargs`` select into the lake; return how many were read."""
        batch, read = [], 0
        try:
            async for msg in self.client.iter_messages(entity, limit=self.opts["limit"], reverse=True, **kwargs):
                if getattr(msg, "action", None) is not None:  # service messages (pins, title changes)
                    continue
                batch.append(msg)
                read += 1
                if len(batch) >= BATCH:
                    await self._flush(entity, username, batch, advance)
                    batch = []
        finally:
            # Whatever ended the pass (end, FloodWait, network error), keep what was read.
            if batch:
                await self._flush(entity, username, batch, advance)
        return read

    async def _flush(self, entity, username: str, batch: list, advance: bool) -> None:
        """Photos, then partitions, then the resume point: a crash in between redoes the batch."""
        records = []
        unavailable = getattr(self.client, "media_unavailable", None)  # stand-ins of exports only
        for msg in batch:
            image_path = await self._photo(username, msg) if self.opts["download_photos"] else None
            records.append(message_record(msg, entity, image_path, self.scraped_at,
                                          unavailable(msg) if unavailable else None))
        by_file: dict[Path, list[dict]] = defaultdict(list)
        for rec in records:
            by_file[lake.partition_path(self.lake_dir, username, rec["date"])].append(rec)
        for path, recs in by_file.items():
            existing = lake.read_partition(path)
            changed = False
            for rec in recs:
                old = existing.get(rec["message_id"])
                if old is None:
                    self.result.new_messages += 1
                elif _same(old, rec):
                    continue
                else:
                    self.result.updated_messages += 1
                existing[rec["message_id"]] = rec
                changed = True
            if changed:
                lake.write_partition(path, existing)
                self.result.files.add(path.relative_to(self.lake_dir).as_posix())
        top = max(m.id for m in batch)
        if advance and top > self.result.last_message_id:
            lake.write_state(self.lake_dir, username, {"last_message_id": top})
            self.result.last_message_id = top

    async def _photo(self, username: str, msg) -> str | None:
        if not isinstance(getattr(msg, "media", None), types.MessageMediaPhoto):
            return None
        rel = lake.image_relpath(username, msg.id)
        path = self.lake_dir / rel
        expected = expected_photo_size(msg)
        if path.exists() and (expected is None or path.stat().st_size == expected):
            return rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        got = await self.client.download_media(msg, file=str(tmp))
        if got is None or not tmp.exists():
            tmp.unlink(missing_ok=True)
            return None
        tmp.replace(path)
        self.result.photos_saved += 1
        self.result.files.add(rel)
        return rel


async def _scrape_channel(client, lake_dir: Path, name: str, opts: dict, sleep) -> ChannelResult:
    result = ChannelResult()
    attempt_no = 0

    async def attempt() -> None:
        nonlocal attempt_no
        attempt_no += 1
        result.retries = attempt_no - 1
        while True:
            try:
                await _ChannelScraper(client, lake_dir, name, opts, result).run()
                return
            except errors.FloodWaitError as exc:
                result.flood_waits += 1
                if exc.seconds > opts["flood_wait_cap_s"]:
                    raise FloodWaitTooLong(exc.seconds) from None
                log.warning("%s: FloodWait %d s, waiting", name, exc.seconds)
                await sleep(exc.seconds)  # then resume from the saved state

    try:
        async for retry in AsyncRetrying(
            retry=retry_if_exception_type(NETWORK_ERRORS),
            stop=stop_after_attempt(opts["network_attempts"]),
            wait=wait_exponential(multiplier=opts["backoff_s"], max=60),
            sleep=sleep, reraise=True,
        ):
            with retry:
                await attempt()
    except FloodWaitTooLong as exc:
        result.error = f"flood_wait: {exc}; progress saved at message {result.last_message_id}"
    except NETWORK_ERRORS as exc:  # before CHANNEL_ERRORS: Telegram's server errors are RPCErrors too
        result.error = f"network: {type(exc).__name__}: {exc} (after {attempt_no} attempts)"
    except CHANNEL_ERRORS as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    if result.error:
        log.error("channel %s: %s", name, result.error)
    return result


def _run(coro: Awaitable, client):
    loop = getattr(client, "loop", None)
    if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_running():
        return loop.run_until_complete(coro)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from a running loop (a notebook): run in a worker thread with its own loop.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def scrape_telegram_data(
    client,
    channels: Sequence[str],
    lake_dir: str | Path,
    *,
    limit: int | None = None,
    since: datetime | None = None,
    download_photos: bool = True,
    refresh_days: int = 0,
    full_resync: bool = False,
    flood_wait_cap_s: int = 300,
    network_attempts: int = 5,
    backoff_s: float = 1.0,
    sleep: Callable[[float], Awaitable] = asyncio.sleep,
    run_id: str | None = None,
    on_channel: Callable[[dict], None] | None = None,
) -> dict:
    """Scrape ``channels`` into the lake at ``lake_dir``; return a summary dict.

    Incremental per channel (``min_id`` = last stored id, oldest first); ``since``
    limits a first backfill; ``refresh_days`` re-reads that many recent days to
    refresh view and forward counts; ``full_resync`` re-reads all history (idempotent
    merge, the resume point never moves back). A failing channel is reported in the
    summary and the others still run; ``status`` is ``success``, ``partial`` or
    ``failed``. An unusable resume point (``state/<channel>.json``) fails its channel, naming
    the file and what to do; one beyond the channel's newest message (and the lake's) is rewound
    to the lake's newest and read on from, the channel's ``warning`` (and ``warnings``) saying
    so. Raises :class:`~medical_etl.scrape.channels.ChannelNameError` before any
    request when a name is invalid. ``on_channel`` (progress) is called after each channel with
    ``{channel, done, total, new_messages, photos_saved, error, ...}``.
    """
    names = parse_channels(channels, source="channels")
    lake_dir = Path(lake_dir)
    run_id = run_id or new_run_id()
    opts = dict(limit=limit, since=since, download_photos=download_photos, refresh_days=refresh_days,
                full_resync=full_resync, flood_wait_cap_s=flood_wait_cap_s, network_attempts=network_attempts, backoff_s=backoff_s)
    t0 = time.perf_counter()

    async def main():
        out = {}
        for i, n in enumerate(names, 1):
            out[n] = await _scrape_channel(client, lake_dir, n, opts, sleep)
            if on_channel:
                on_channel({"channel": n, "done": i, "total": len(names), **out[n].as_dict()})
        return out

    results: dict[str, ChannelResult] = _run(main(), client)
    files = sorted(set().union(*(r.files for r in results.values()))) if results else []
    failed = [n for n, r in results.items() if r.error]
    status = "success" if not failed else ("failed" if len(failed) == len(results) else "partial")
    summary = {
        "run_id": run_id,
        "status": status,
        "channels": {n: r.as_dict() for n, r in results.items()},
        "new_messages": sum(r.new_messages for r in results.values()),
        "updated_messages": sum(r.updated_messages for r in results.values()),
        "photos_saved": sum(r.photos_saved for r in results.values()),
        "failed_channels": failed,
        "warnings": [f"{n}: {r.warning}" for n, r in results.items() if r.warning],
        "files_written": len(files),
        "duration_s": round(time.perf_counter() - t0, 3),
    }
    if files:
        lake.atomic_write_json(lake_dir / lake.MANIFESTS_DIR / f"{run_id}.json",
                               {**summary, "files": files, "finished_at": datetime.now(timezone.utc).isoformat()})
    return summary


def import_telegram_export(export_dir: str | Path, lake_dir: str | Path, channel: str | None = None, *,
                           run_id: str | None = None, on_channel: Callable[[dict], None] | None = None) -> dict:
    """Import a Telegram Desktop JSON export into the lake, idempotently (same layout, state and
    record fields as an API scrape), for backfilling history without the API.

    Only regular files inside ``export_dir`` are read: a photo path leading elsewhere (``..``, an
    absolute path, a symlink out, a device or FIFO) is refused, never copied, and listed with its
    reason in the summary's ``refused_files`` (the post itself is kept, media status ``refused``).
    """
    from medical_etl.scrape.standin import StandInClient, read_desktop_export

    refused: list[dict] = []
    posts = read_desktop_export(export_dir, channel, refused=refused)
    if not posts:
        raise ValueError(f"{export_dir}: the export holds no messages")
    for r in refused:
        log.warning("export %s: message %s: refused file %r: %s", export_dir, r["message_id"], r["file"], r["reason"])
    summary = scrape_telegram_data(StandInClient(posts), [posts[0].channel], lake_dir, full_resync=True,
                                   run_id=run_id, on_channel=on_channel)
    return {**summary, "files_refused": len(refused), "refused_files": refused}
