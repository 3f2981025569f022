"""Static files storage for runs without DEBUG."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    """Hashed, compressed copies once `collectstatic` has written its manifest; plain names before.

    Django's manifest storage raises on every `{% static %}` until collectstatic has run, so a
    checkout started without it would answer 500 on every page. With no manifest at all the
    plain name is used instead, and WhiteNoise serves it from the source folders
    (WHITENOISE_USE_FINDERS). A manifest that lacks a file still raises: that is a stale build.

    The rating page is ES modules that import each other by relative name (`from "./api.js"`):
    collectstatic rewrites those imports to the hashed names as well, so a module never runs
    against an older copy of another and every one of them stays cacheable for ever.
    """

    support_js_module_import_aggregation = True

    def stored_name(self, name):
        if not self.hashed_files:
            return name
        return super().stored_name(name)
