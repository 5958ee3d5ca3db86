"""The live dashboard served by `guard serve`: a JSON API, Server-Sent Events tailing run
journals, and a static page. Build the app with `guard.web.app.create_app(settings)`."""
