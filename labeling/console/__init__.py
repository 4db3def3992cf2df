"""The labeling admins' pages ("Manage"): projects, import, data browser, export, people.

Server-rendered Django pages for the daily work an admin would otherwise do in the
Django admin or with the CLI. Thin callers of the services, selectors, importing and
exporting modules, as the annotator pages and the REST API are.
"""
