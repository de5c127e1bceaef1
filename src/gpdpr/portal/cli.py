"""`gpdpr portal`: serve the portal over a service home, and set the passwords people sign in
with."""

from __future__ import annotations

from typing import Annotated

import typer

from gpdpr.home import DEFAULT_HOME, Home
from gpdpr.terminal import console, fail

portal_app = typer.Typer(
    rich_markup_mode=None,
    help="The portal: public pages, patients' opt-outs, applications, the panel, output checking.",
    no_args_is_help=True,
)


def check_port_free(host: str, port: int, what_to_do: str) -> None:
    """Before anything is printed or started: the address must be free to listen on, or the
    command ends with one line, not the server's traceback after it had announced itself."""
    import socket

    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        fail(f"cannot serve the portal on {host}:{port} ({exc.strerror or exc}): {what_to_do}")


@portal_app.command("serve")
def serve_command(
    home: Home = DEFAULT_HOME,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the portal until stopped (Ctrl-C)."""
    from gpdpr.errors import UserError
    from gpdpr.portal.serve import serve

    check_port_free(host, port, "pass another --port, or stop what is using it")
    console.print(f"gpdpr portal at http://{host}:{port}/ (Ctrl-C to stop)", markup=False)
    try:
        serve(home, host, port)
    except UserError as exc:
        fail(str(exc))


@portal_app.command("password")
def password_command(
    handle: Annotated[str, typer.Argument(help="The person's handle.")],
    home: Home = DEFAULT_HOME,
) -> None:
    """Set the password a person signs in to the portal with (asked for, never echoed)."""
    from sqlalchemy.orm import Session

    from gpdpr.db import connect, url_for_home
    from gpdpr.errors import UserError
    from gpdpr.portal.accounts import set_password
    from gpdpr.portal.security import Passwords

    password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        engine = connect(url_for_home(home))
        with Session(engine) as session, session.begin():
            set_password(session, Passwords(), handle, password)
    except UserError as exc:
        fail(str(exc))
    console.print(f"{handle} can now sign in to the portal with that password.", markup=False)


@portal_app.command("role")
def role_command(
    handle: Annotated[str, typer.Argument(help="The person's handle.")],
    by: Annotated[
        str, typer.Option("--as", metavar="HANDLE", help="Your handle: an administrator's.")
    ],
    add: Annotated[
        list[str] | None,
        typer.Option("--add", metavar="ROLE", help="A role to give (repeat for more)."),
    ] = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", metavar="ROLE", help="A role to take (repeat for more)."),
    ] = None,
    home: Home = DEFAULT_HOME,
) -> None:
    """Change a person's roles (an administrator does): their portal sessions end, and the
    change is recorded for the transparency log."""
    from sqlalchemy.orm import Session

    from gpdpr.db import connect, url_for_home
    from gpdpr.errors import UserError
    from gpdpr.portal.accounts import change_roles

    try:
        engine = connect(url_for_home(home))
        with Session(engine) as session, session.begin():
            roles = change_roles(session, by, handle, add or [], remove or [])
    except UserError as exc:
        fail(str(exc))
    console.print(
        f"{handle} now has roles {', '.join(roles)}; their portal sessions were ended.",
        markup=False,
        soft_wrap=True,
    )
