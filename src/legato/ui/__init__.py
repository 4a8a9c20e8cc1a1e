"""The web UI `legato serve` shows at `/`: server-rendered pages, an SVG graph laid out in Python,
and one small script for live updates and actions. Every asset ships in this package (no CDN)."""
