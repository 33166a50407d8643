"""Runboard's URLs plus the views the page benchmark compares against: trivial, and
an empty page (base.html and nothing else: what every page pays)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.template import engines
from django.urls import path

from dashboard.urls import urlpatterns as runboard


@login_required
def trivial(request):
    return HttpResponse("ok")


# Compiled once, as the cached template loader keeps a page's template.
EMPTY = engines["django"].from_string('{% extends "base.html" %}')


@login_required
def empty(request):
    # As render() does: the template with the request (and so the context processors).
    return HttpResponse(EMPTY.render({}, request))


urlpatterns = [path("trivial/", trivial), path("empty/", empty), *runboard]
