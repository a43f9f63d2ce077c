from django.db import models


class Order(models.Model):
    """An order; a task confirms it once the transaction that created it has committed."""

    item = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed = models.BooleanField(default=False)
    #: The id of the aioqueue task that confirmed it.
    confirmation_task_id = models.CharField(max_length=64, blank=True, default="")
