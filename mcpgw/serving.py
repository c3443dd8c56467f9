"""What the gateway changes in the HTTP server that serves it (daphne), when it loads.

Twisted, under daphne, looks at every POST's Content-Type to parse form bodies into
`request.args`, which daphne never reads: it hands the body to the application, and Django
and the data path parse it themselves. Twisted's parse of the header goes through the email
package, which makes a new class for each header it parses: about 70 µs of every tool call,
and a dozen objects in reference cycles that only the garbage collector frees (nearly all
of what it found to free under the benchmark, and its collections stop the event loop).
A malformed multipart body was also answered by Twisted with a bare 400 and a closed
connection before the application saw it.
"""

from daphne import http_protocol


class WebRequest(http_protocol.WebRequest):
    """daphne's request, without Twisted's parsing of form bodies."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)


def skip_form_parsing() -> None:
    """daphne's factory builds each connection's requests from this module attribute."""
    if not issubclass(http_protocol.WebRequest, WebRequest):
        http_protocol.WebRequest = WebRequest
