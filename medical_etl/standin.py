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
import shutil
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


def _stable_id(name: str) -> int:
    return int(hashlib.sha1(name.lower().encode()).hexdigest()[:8], 16)


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
        media = None
        if post.photo is not None:
            size = post.photo.stat().st_size
            media = types.MessageMediaPhoto(photo=types.Photo(
                id=ch.id * 1_000_000 + post.id, access_hash=1, file_reference=b"", date=post.date,
                sizes=[types.PhotoSize(type="y", w=1280, h=1280, size=size)], dc_id=4))
            self._photo_files[(ch.id, post.id)] = post.photo
        reply = types.MessageReplyHeader(reply_to_msg_id=post.reply_to) if post.reply_to else None
        return types.Message(
            id=post.id, peer_id=types.PeerChannel(ch.id), date=post.date, message=post.text,
            post=True, views=post.views, forwards=post.forwards, reply_to=reply,
            grouped_id=post.grouped_id, media=media,
            replies=types.MessageReplies(replies=0, replies_pts=0))

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
        shutil.copyfile(src, file)
        return str(file)


# --- readers of recorded posts --------------------------------------------------

def _text(value) -> str:
    """Desktop export text: a string, or a list of strings and {type, text} entities."""
    if isinstance(value, str):
        return value
    return "".join(part if isinstance(part, str) else part.get("text", "") for part in value or [])


def read_desktop_export(export_dir: str | Path, channel: str | None = None) -> list[Post]:
    """Posts of a Telegram Desktop "Export chat history" (JSON): ``result.json`` plus ``photos/``.

    The export holds no username, so ``channel`` names it (default: the folder's name).
    """
    export_dir = Path(export_dir)
    data = json.loads((export_dir / "result.json").read_text(encoding="utf-8"))
    channel = channel or export_dir.name
    posts = []
    for m in data.get("messages", []):
        if m.get("type") != "message":
            continue
        if m.get("date_unixtime"):
            date = datetime.fromtimestamp(int(m["date_unixtime"]), tz=timezone.utc)
        else:
            date = datetime.fromisoformat(m["date"]).replace(tzinfo=timezone.utc)
        photo = export_dir / m["photo"] if m.get("photo") and (export_dir / m["photo"]).is_file() else None
        posts.append(Post(channel=channel, id=int(m["id"]), date=date, text=_text(m.get("text")),
                          views=m.get("views"), forwards=m.get("forwards"), photo=photo,
                          reply_to=m.get("reply_to_message_id"), channel_title=data.get("name")))
    return posts


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
