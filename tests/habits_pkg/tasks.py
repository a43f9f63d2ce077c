"""Found by ``app.autodiscover_tasks(["tests.habits_pkg"])``."""

from aioqueue import shared_task


@shared_task(name="habits.shared_double")
def double(x: int) -> int:
    return 2 * x
