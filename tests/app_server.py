"""Launch the app in this process on a free localhost port (for the end-to-end tests)."""
import os
import socket

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch():
    """(url, studio, demo): the app's module-level demo, served without blocking."""
    import app
    from components import context

    port = free_port()
    app.serve(app.demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/", context.studio(), app.demo
