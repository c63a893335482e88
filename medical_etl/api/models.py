"""Typed responses of the analytical API (pydantic); prices are in Ethiopian birr (ETB)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Error(BaseModel):
    error: str = Field(description="what went wrong, for a person")
    status: int
    parameter: str | None = Field(None, description="the request parameter at fault (422)")
    detail: list[dict[str, Any]] | None = None


class Page(BaseModel):
    limit: int
    offset: int = 0
    total: int = Field(description="items matching the filters")
    next_offset: int | None = Field(None, description="offset of the next page; null on the last page")


class TopProduct(BaseModel):
    product: str = Field(description="normalised (lower-case) product name, or the generic with group=generic; "
                                     "use it in /api/products/{name}/prices")
    product_key: str | None = Field(description="the product in marts.dim_products (null with group=generic)")
    display_name: str = Field(description="the product's clean name (a medicine's from its generic, strength "
                                          "and form), or the generic")
    generic_name: str | None = Field(description="WHO INN(s), lower case; null unless a medicine")
    product_kind: Literal["medicine", "cosmetic", "baby_food", "device", "other"]
    strength: str | None
    dosage_form: str | None
    products: int = Field(description="products counted together (more than 1 only with group=generic)")
    mentions: int = Field(description="price mentions in posts")
    posts: int
    min_price_birr: float
    median_price_birr: float
    max_price_birr: float
    channels: list[str]
    first_seen_at: datetime
    last_seen_at: datetime


class TopProducts(BaseModel):
    currency: Literal["ETB"] = "ETB"
    channel: str | None
    since: date | None
    until: date | None
    kind: str | None
    generic: str | None
    group: Literal["product", "generic"]
    page: Page
    items: list[TopProduct]


class PricePoint(BaseModel):
    date: date
    channel: str
    mentions: int
    min_price_birr: float
    median_price_birr: float
    max_price_birr: float


class PriceHistory(BaseModel):
    product: str
    display_name: str
    generic_name: str | None
    matched: Literal["product", "generic"] = Field(description="whether the name was a product's or a generic's "
                                                               "(then the points cover all its products)")
    products: list[str] = Field(description="the products the points cover")
    currency: Literal["ETB"] = "ETB"
    channel: str | None
    since: date | None
    until: date | None
    channels: list[str]
    points: list[PricePoint]


class Channel(BaseModel):
    channel: str
    title: str
    posts: int
    photo_posts: int
    photo_share: float = Field(description="share of posts with a photo, 0..1")
    avg_views: float | None
    first_post_at: datetime
    last_post_at: datetime


class Channels(BaseModel):
    page: Page
    items: list[Channel]


class ActivityPeriod(BaseModel):
    period_start: date = Field(description="the day, or the Monday of the ISO week")
    posts: int
    views: int
    avg_views: float
    photo_posts: int
    photo_share: float
    posts_with_prices: int
    prices_posted: int


class ChannelActivity(BaseModel):
    channel: str
    granularity: Literal["day", "week"]
    since: date | None
    until: date | None
    periods: list[ActivityPeriod]


class SearchHit(BaseModel):
    channel: str
    message_id: int
    message_date: datetime
    views: int
    rank: float
    snippet: str = Field(description="the matching passage, matches between « and »")
    text: str


class SearchResults(BaseModel):
    query: str
    total: int = Field(description="posts matching the query and filters (counted up to 1,000)")
    total_exact: bool = Field(description="false when more than 1,000 posts match")
    ranked: int = Field(description="matches ranked and paged: all of them, or the newest 500 when over 1,000 match")
    next_cursor: str | None = Field(None, description="pass as cursor= for the next page; null on the last")
    items: list[SearchHit]


class Engagement(BaseModel):
    posts: int = Field(description="posts of the group")
    avg_views: float | None = Field(description="their average views (null without posts)")
    median_views: float | None = Field(description="their median views (null without posts)")


class ChannelVisuals(BaseModel):
    channel: str
    posts: int
    photo_posts: int
    photo_share: float
    photos_analysed: int
    categories: dict[str, int] = Field(description="analysed photos per image category")
    category_share: dict[str, float]
    engagement: dict[str, Engagement] = Field(
        description="views of the channel's posts per image group: with_photo, without_photo, each image "
                    "category, not_analysed (a photo not analysed yet)")


class ObjectClass(BaseModel):
    class_name: str
    objects: int
    photos: int


class VisualContent(BaseModel):
    since: date | None
    until: date | None
    categories: list[str]
    groups: list[str] = Field(description="the image groups of engagement")
    channels: list[ChannelVisuals] = Field(description="ordered by photo share, most visual first")
    engagement: dict[str, Engagement] = Field(description="the same over all channels")
    top_classes: list[ObjectClass] = Field(description="over all days")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]
    version: str
