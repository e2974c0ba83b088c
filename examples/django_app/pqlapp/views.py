"""Views of the Django recipe."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .apps import pql


@csrf_exempt
@require_POST
def track(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    found = pql().track(body["user_id"], body["event"], body.get("properties"),
                        account_id=body.get("account_id"))
    return JsonResponse({"qualified": [q.rule for q in found]})


def ping(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"pong": "ok"})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse(pql().health().to_dict())
