"""Runboard's URLs plus the trivial view the page benchmark compares against."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.urls import path

from dashboard.urls import urlpatterns as runboard


@login_required
def trivial(request):
    return HttpResponse("ok")


urlpatterns = [path("trivial/", trivial), *runboard]
