"""Sans-IO L7 protocol parsers and the proxies built on them."""
