"""A stand-in Telegram client serving recorded posts as real ``telethon.tl.types`` objects.

It implements the three async methods the scrape stage uses (``get_entity``,
``iter_messages``, ``download_media``) with Telegram's semantics for
``min_id``, ``max_id``, ``offset_date``, ``reverse`` and ``limit``, in pages of
100 like the real API, and records every history request. The demo serves the
shipped desktop export through it; the tests serve the real shared sample.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from telethon import errors
from telethon.tl import types

PAGE = 100


@dataclass(frozen=True)
class Post:
    channel: str
    id: int
    date: datetime
    text: str = ""
    views: int | None = None
    forwards: int | None = None
    photo: Path | None = None
    reply_to: int | None = None
    grouped_id: int | None = None
    channel_title: str | None = None
    edit_date: datetime | None = None
    # photo, video, video_message, animation, voice, audio, sticker, document, geo or contact (the names
    # the scrape record builder derives from Telethon's types); default: photo when ``photo`` is set.
    media_type: str | None = None
    # Why the post's media file is not served: "not_included" (the export left it out), "missing"
    # (named, but not in the folder) or "refused" (outside the export folder, or not a regular file).
    media_unavailable: str | None = None
    mime_type: str | None = None
    file_name: str | None = None
    forward_from_name: str | None = None
    forward_from_id: int | None = None


def _stable_id(name: str) -> int:
    return int(hashlib.sha1(name.lower().encode()).hexdigest()[:8], 16)


_DOC_ATTRIBUTES = {
    "video": lambda p: [types.DocumentAttributeVideo(duration=0, w=0, h=0)],
    "video_message": lambda p: [types.DocumentAttributeVideo(duration=0, w=0, h=0, round_message=True)],
    "animation": lambda p: [types.DocumentAttributeAnimated(), types.DocumentAttributeVideo(duration=0, w=0, h=0)],
    "voice": lambda p: [types.DocumentAttributeAudio(duration=0, voice=True)],
    "audio": lambda p: [types.DocumentAttributeAudio(duration=0)],
    "sticker": lambda p: [types.DocumentAttributeSticker(alt="", stickerset=types.InputStickerSetEmpty())],
    "document": lambda p: [types.DocumentAttributeFilename(file_name=p.file_name)] if p.file_name else [],
}
_DOC_MIME = {"video": "video/mp4", "video_message": "video/mp4", "animation": "video/mp4", "voice": "audio/ogg",
             "audio": "audio/mpeg", "sticker": "image/webp", "document": "application/octet-stream"}


def _media(media_id: int, post: Post):
    """The Telethon media object of a post, as the API would give it."""
    kind = post.media_type or ("photo" if post.photo is not None else None)
    if kind is None:
        return None
    if kind == "photo":
        size = post.photo.stat().st_size if post.photo is not None else 0
        return types.MessageMediaPhoto(photo=types.Photo(
            id=media_id, access_hash=1, file_reference=b"", date=post.date,
            sizes=[types.PhotoSize(type="y", w=1280, h=1280, size=size)], dc_id=4))
    if kind in _DOC_ATTRIBUTES:
        return types.MessageMediaDocument(document=types.Document(
            id=media_id, access_hash=1, file_reference=b"", date=post.date,
            mime_type=post.mime_type or _DOC_MIME[kind], size=0, dc_id=4, attributes=_DOC_ATTRIBUTES[kind](post)))
    if kind == "geo":
        return types.MessageMediaGeo(geo=types.GeoPoint(long=0.0, lat=0.0, access_hash=0))
    if kind == "contact":
        return types.MessageMediaContact(phone_number="", first_name="", last_name="", vcard="", user_id=0)
    return types.MessageMediaUnsupported()


class StandInClient:
    """Serves ``posts``; ``private`` names raise ChannelPrivateError like a private channel."""

    def __init__(self, posts: list[Post], private: set[str] = frozenset(), page_size: int = PAGE):
        self.page_size = page_size
        self.private = {p.lower() for p in private}
        self.history_requests: list[dict] = []
        self.downloads: list[str] = []
        self._channels: dict[str, types.Channel] = {}
        self._messages: dict[int, list[types.Message]] = {}
        self._photo_files: dict[tuple[int, int], Path] = {}
        self._unavailable: dict[tuple[int, int], str] = {}
        for post in sorted(posts, key=lambda p: (p.channel.lower(), p.id)):
            ch = self._channel(post)
            self._messages.setdefault(ch.id, []).append(self._message(ch, post))

    def _channel(self, post: Post) -> types.Channel:
        key = post.channel.lower()
        if key not in self._channels:
            cid = _stable_id(post.channel)
            self._channels[key] = types.Channel(
                id=cid, title=post.channel_title or post.channel, photo=types.ChatPhotoEmpty(),
                date=datetime(2020, 1, 1, tzinfo=timezone.utc), broadcast=True,
                access_hash=cid * 7, username=post.channel)
        return self._channels[key]

    def _message(self, ch: types.Channel, post: Post) -> types.Message:
        media = _media(ch.id * 1_000_000 + post.id, post)
        if post.photo is not None:
            self._photo_files[(ch.id, post.id)] = post.photo
        if post.media_unavailable:
            self._unavailable[(ch.id, post.id)] = post.media_unavailable
        reply = types.MessageReplyHeader(reply_to_msg_id=post.reply_to) if post.reply_to else None
        fwd = None
        if post.forward_from_name or post.forward_from_id:
            fwd = types.MessageFwdHeader(
                date=None, from_name=post.forward_from_name,
                from_id=types.PeerChannel(post.forward_from_id) if post.forward_from_id else None)
        return types.Message(
            id=post.id, peer_id=types.PeerChannel(ch.id), date=post.date, message=post.text,
            post=True, views=post.views, forwards=post.forwards, reply_to=reply,
            grouped_id=post.grouped_id, media=media, edit_date=post.edit_date, fwd_from=fwd,
            replies=types.MessageReplies(replies=0, replies_pts=0))

    def media_unavailable(self, message) -> str | None:
        """Why ``message``'s media file cannot be downloaded ("not_included", "refused"), else None.

        Not part of Telethon: the scrape stage asks clients that have it, so an imported post
        whose export left the file out is recorded as such, not as a post without media.
        """
        return self._unavailable.get((message.peer_id.channel_id, message.id))

    # --- the Telethon surface ------------------------------------------------

    async def get_entity(self, name: str):
        key = str(name).lower().removeprefix("@")
        if key in self.private:
            raise errors.ChannelPrivateError(request=None)
        if key not in self._channels:
            raise ValueError(f'Cannot find any entity corresponding to "{name}"')
        return self._channels[key]

    async def iter_messages(self, entity, limit=None, *, min_id=0, max_id=0, offset_date=None,
                            reverse=False, **_ignored):
        msgs = [m for m in self._messages.get(entity.id, [])
                if m.id > min_id and (not max_id or m.id < max_id)
                and (offset_date is None or (m.date >= offset_date if reverse else m.date < offset_date))]
        if not reverse:
            msgs.reverse()
        if limit is not None:
            msgs = msgs[:limit]
        pos = 0
        while True:
            page = msgs[pos:pos + self.page_size]
            self.history_requests.append({"channel": entity.username, "min_id": min_id, "max_id": max_id,
                                          "offset": pos, "returned": len(page)})
            await self.on_page(entity, len(self.history_requests))
            for m in page:
                yield m
            pos += self.page_size
            if len(page) < self.page_size:
                return

    async def on_page(self, entity, request_no: int) -> None:
        """Hook for tests: raise here to simulate FloodWait or a dropped connection."""

    async def download_media(self, message, file=None, **_ignored):
        src = self._photo_files.get((message.peer_id.channel_id, message.id))
        if src is None:
            return None
        self.downloads.append(f"{message.peer_id.channel_id}/{message.id}")
        # Open without following a final symlink and without blocking on a FIFO, then check that
        # what was opened is a regular file: the checked path cannot be swapped for another.
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            with open(file, "wb") as out:
                shutil.copyfileobj(fh, out)
        return str(file)


# --- readers of recorded posts --------------------------------------------------

def _text(value) -> str:
    """Desktop export text: a string, or a list of strings and {type, text} entities."""
    if isinstance(value, str):
        return value
    return "".join(part if isinstance(part, str) else part.get("text", "") for part in value or [])


# Telegram Desktop's media_type values -> the names the scrape record builder uses.
_EXPORT_MEDIA = {"video_file": "video", "video_message": "video_message", "animation": "animation",
                 "voice_message": "voice", "audio_file": "audio", "sticker": "sticker"}
_NOT_INCLUDED = "(File not included"


def _export_time(m: dict, key: str) -> datetime | None:
    if m.get(f"{key}_unixtime"):
        return datetime.fromtimestamp(int(m[f"{key}_unixtime"]), tz=timezone.utc)
    if m.get(key):
        return datetime.fromisoformat(m[key]).replace(tzinfo=timezone.utc)
    return None


def export_file(export_dir: Path, name) -> tuple[Path | None, str | None]:
    """Resolve a file an export names; return (path, None) or (None, the reason it is refused).

    Only a regular file inside the export folder is accepted: no absolute path, no ``..``, no
    symlink leading out, no device, FIFO or socket. An input never makes us read anything else.
    """
    if not isinstance(name, str) or not name:
        return None, "not a file name"
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        return None, "outside the export folder"
    root = export_dir.resolve()
    path = export_dir / rel
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None, "missing"
    if not real.is_relative_to(root):
        return None, "outside the export folder (symlink)"
    st = real.stat()
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    return real, None


def _forward_id(value) -> int | None:
    """``forwarded_from_id`` ("channel123", "user45") as the peer's number."""
    if isinstance(value, str):
        digits = value.removeprefix("channel").removeprefix("user").removeprefix("chat")
        return int(digits) if digits.isdigit() else None
    return None


def _export_post(export_dir: Path, channel: str, title, m: dict, refused: list | None) -> Post:
    photo = media_type = unavailable = None
    file_ref = m.get("photo") if m.get("photo") is not None else m.get("file")
    if m.get("photo") is not None:
        media_type = "photo"
    elif m.get("file") is not None or m.get("media_type"):
        media_type = _EXPORT_MEDIA.get(m.get("media_type"), "document")
    elif m.get("location_information"):
        media_type = "geo"
    elif m.get("contact_information"):
        media_type = "contact"
    if isinstance(file_ref, str) and file_ref.startswith(_NOT_INCLUDED):
        unavailable = "not_included"
    elif media_type == "photo":
        photo, reason = export_file(export_dir, file_ref)
        if reason == "missing":
            unavailable = "missing"
        elif reason:
            unavailable = "refused"
            if refused is not None:
                refused.append({"message_id": m.get("id"), "file": str(file_ref)[:200], "reason": reason})
    return Post(channel=channel, id=int(m["id"]), date=_export_time(m, "date"), text=_text(m.get("text")),
                views=m.get("views"), forwards=m.get("forwards"), photo=photo,
                reply_to=m.get("reply_to_message_id"), channel_title=title,
                edit_date=_export_time(m, "edited"), media_type=media_type, media_unavailable=unavailable,
                mime_type=m.get("mime_type"), file_name=m.get("file_name"),
                forward_from_name=m.get("forwarded_from"), forward_from_id=_forward_id(m.get("forwarded_from_id")))


def read_desktop_export(export_dir: str | Path, channel: str | None = None,
                        refused: list[dict] | None = None) -> list[Post]:
    """Posts of a Telegram Desktop "Export chat history" (JSON): ``result.json`` plus ``photos/``.

    The export holds no username, so ``channel`` names it (default: the folder's name). Edit
    time, media type (also of media whose file the export did not include) and forward origin
    are kept. A photo path that is not a regular file inside the export folder is refused: the
    post keeps its media type, the file is never read, and ``refused`` (when given) gets
    ``{message_id, file, reason}``.
    """
    export_dir = Path(export_dir)
    data = json.loads((export_dir / "result.json").read_text(encoding="utf-8"))
    channel = channel or export_dir.name
    return [_export_post(export_dir, channel, data.get("name"), m, refused)
            for m in data.get("messages", []) if m.get("type") == "message"]


def read_message_list(messages_dir: str | Path, images_dir: str | Path | None = None) -> list[Post]:
    """Posts from ``<channel>.json`` files of message objects (``message_id, channel_name,
    message_date, message_text, views, forwards, reply_to_msg_id``), photos at
    ``images_dir/<channel>/<message_id>.jpg``: the format public scrapers of these channels save."""
    posts = []
    for path in sorted(Path(messages_dir).glob("*.json")):
        for m in json.loads(path.read_text(encoding="utf-8")):
            ch = m["channel_name"]
            photo = Path(images_dir) / ch / f"{m['message_id']}.jpg" if images_dir else None
            posts.append(Post(
                channel=ch, id=int(m["message_id"]),
                date=datetime.fromisoformat(m["message_date"]).astimezone(timezone.utc),
                text=m.get("message_text") or "", views=m.get("views"), forwards=m.get("forwards"),
                photo=photo if photo and photo.is_file() else None, reply_to=m.get("reply_to_msg_id")))
    return posts
