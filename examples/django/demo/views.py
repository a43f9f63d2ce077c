"""Views calling tasks the way a Celery project does, plus their async and Django-Tasks forms."""

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST
from proj.celery import app

from aioqueue import State

from .models import Order
from .tasks import add, count_orders, send_confirmation


@require_POST
def add_view(request: HttpRequest) -> JsonResponse:
    """A sync view: ``delay()`` sends (blocking, as Celery's) and returns a result handle."""
    result = add.delay(int(request.GET["x"]), int(request.GET["y"]))
    return JsonResponse({"task_id": result.id}, status=202)


@require_GET
def task_status(request: HttpRequest, task_id: str) -> JsonResponse:
    """Any task's state, in a later request: ``app.AsyncResult(task_id)``, as Celery's."""
    result = app.AsyncResult(task_id)
    state = result.state
    body = {"task_id": task_id, "state": str(state), "result": None, "error": None}
    if state == State.SUCCESS:
        body["result"] = result.result
    elif state in (State.FAILURE, State.REVOKED):
        body["error"] = repr(result.result)
    return JsonResponse(body)


@require_POST
async def add_async_view(request: HttpRequest) -> JsonResponse:
    """An async view: ``await delay()`` for the handle, ``await handle`` for the result."""
    handle = await add.delay(int(request.GET["x"]), int(request.GET["y"]))
    value = await handle.get(timeout=10)
    return JsonResponse({"task_id": handle.id, "result": value})


class PaymentDeclined(Exception):
    pass


@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """``delay_on_commit``: the confirmation is sent only if the order is committed."""
    try:
        with transaction.atomic():
            order = Order.objects.create(item=request.GET.get("item", "book"))
            send_confirmation.delay_on_commit(order.pk)
            if request.GET.get("decline"):
                raise PaymentDeclined  # rolls back: no order, and nothing is sent
    except PaymentDeclined:
        return JsonResponse({"error": "payment declined"}, status=402)
    return JsonResponse({"order": order.pk}, status=201)


@require_POST
def count_orders_view(request: HttpRequest) -> JsonResponse:
    """Django's Tasks framework: ``enqueue()`` sends it to the aioqueue workers."""
    result = count_orders.enqueue(confirmed=True)
    return JsonResponse({"result_id": result.id, "status": result.status}, status=202)


@require_GET
def count_orders_result(request: HttpRequest, result_id: str) -> JsonResponse:
    """``get_result()``: READY, RUNNING, SUCCESSFUL or FAILED, from aioqueue's result."""
    result = count_orders.get_result(result_id)
    body = {"result_id": result.id, "status": result.status, "return_value": None,
            "errors": [error.exception_class_path for error in result.errors]}
    if result.is_finished and not result.errors:
        body["return_value"] = result.return_value
    return JsonResponse(body)
