from conftest import Layout, make_image, wait_for


def test_daemon_publishes_a_dropped_jpeg(layout: Layout, daemon) -> None:
    proc = daemon()
    proc.wait_started()
    make_image(layout.inbox / "a.jpg")
    wait_for(lambda: (layout.outbox / "a.motion.json").exists(), 30)
    assert proc.stop() == 0
    assert layout.files(layout.outbox) == ["a.jpg", "a.motion.json", "a.motion.mp4"]
