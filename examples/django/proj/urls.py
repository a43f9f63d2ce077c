from demo import views
from django.urls import path

urlpatterns = [
    path("add", views.add_view),
    path("add-async", views.add_async_view),
    path("tasks/<str:task_id>", views.task_status),
    path("orders", views.create_order),
    path("orders/count", views.count_orders_view),
    path("orders/count/<str:result_id>", views.count_orders_result),
]
