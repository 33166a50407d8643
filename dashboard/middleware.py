"""Under /api/ every answer is JSON, including the errors Django and ninja produce
themselves (a path that matches no endpoint, a method an endpoint does not take)."""

from http import HTTPStatus

from django.http import JsonResponse

API_PREFIX = "/api/"


class ApiJsonErrors:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (response.status_code < 400 or not request.path.startswith(API_PREFIX)
                or response.get("Content-Type", "").startswith("application/json")):
            return response
        status = response.status_code
        if status == 404:
            message = "No such API path; see /api/docs."
        elif status == 405:
            message = f"{request.method} is not allowed here; use {response.get('Allow', '')}."
        else:
            message = HTTPStatus(status).phrase
        replacement = JsonResponse({"error": message}, status=status)
        if "Allow" in response:
            replacement["Allow"] = response["Allow"]
        return replacement
