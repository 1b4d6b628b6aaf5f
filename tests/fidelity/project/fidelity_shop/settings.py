"""Plain Scrapy settings: the fidelity suite adds the add-on with ``-s ADDONS=...``."""

BOT_NAME = "fidelity_shop"
SPIDER_MODULES = ["fidelity_shop.spiders"]
ROBOTSTXT_OBEY = False
REMOTE_CONTROL_ENABLED = False
TELNETCONSOLE_ENABLED = False
LOG_LEVEL = "INFO"
CONCURRENT_REQUESTS = 4
CONCURRENT_REQUESTS_PER_DOMAIN = 4
DOWNLOAD_DELAY = 0
RETRY_ENABLED = False
ITEM_PIPELINES = {"fidelity_shop.pipelines.SQLitePipeline": 300}
FEED_EXPORT_ENCODING = "utf-8"
CHECKPOINT_LOG_INTERVAL = 0
