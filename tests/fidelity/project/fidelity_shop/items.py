from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlsplit

import scrapy


class ProductItem(scrapy.Item):
    id = scrapy.Field()
    name = scrapy.Field()
    price = scrapy.Field()  # a Decimal
    category = scrapy.Field()
    path = scrapy.Field()
    rating = scrapy.Field()
    reviews = scrapy.Field()


class OrderItem(scrapy.Item):
    user = scrapy.Field()
    order = scrapy.Field()
    total = scrapy.Field()
    path = scrapy.Field()


def product_from(response: scrapy.http.Response) -> ProductItem:
    """The product page's fields (rating and reviews are on another page)."""
    return ProductItem(
        id=int(response.css("h1::attr(data-id)").get()),
        name=response.css("h1::text").get(),
        price=Decimal(response.css("span.price::text").get()),
        category=response.css("a.category::text").get(),
        path=urlsplit(response.url).path,
    )


#: Products of the shop (its four categories of nine).
N_PRODUCTS_HINT = 36
