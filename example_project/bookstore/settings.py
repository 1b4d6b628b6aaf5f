BOT_NAME = "bookstore"
SPIDER_MODULES = ["bookstore.spiders"]

# One line makes the crawl crash-safe: kill it any way, run the same command again.
ADDONS = {"scrapy_checkpoint.Addon": 100}
CHECKPOINT_DIR = "data/checkpoints"
CHECKPOINT_LOG_INTERVAL = 2

FEEDS = {"data/books.jl": {"format": "jsonlines"}}

ROBOTSTXT_OBEY = False
CONCURRENT_REQUESTS = 8
REMOTE_CONTROL_ENABLED = False
TELNETCONSOLE_ENABLED = False
LOG_LEVEL = "INFO"
LOGSTATS_INTERVAL = 3600
