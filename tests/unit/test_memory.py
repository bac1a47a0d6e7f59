"""The start-up memory is handed back through glibc (Debian, the machines we run on)."""

from overlay.agent.memory import release_free_memory


def test_malloc_trim_is_found_and_called() -> None:
    assert release_free_memory() is True
