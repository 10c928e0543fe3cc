"""Text from a model (titles, hypotheses, edit paths quoted in a reject message) or from a sandbox
(train reports, log tails, error text), made safe for where it is shown: markdown reports, the
terminal and git commit messages. One function per target; the ledger keeps the raw text.

"Safe" means the text shows up as the characters it holds and cannot change the structure around
it: no new heading, table row, link or HTML in a report; no markup or escape sequence on a
terminal; no line of a commit message that git or `git am` reads as a mail boundary, a patch or
one of our `Autoresearch-*:` trailers.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls but tab and newline, DEL, C1, and the bidirectional overrides that make a reader
# see characters in another order than they are stored ("trojan source").
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Backslash-escaped in markdown inline text: code spans, emphasis, strikethrough, links, images,
# footnotes, HTML and entities, headings, table cells, math. CommonMark allows a backslash before
# any ASCII punctuation; escaping only these keeps paths like `optim.py` readable in the raw file.
_MARKDOWN = re.compile(r"([\\`*_~\[\]<>&#|!$])")


def printable(text: str) -> str:
    """``text`` without control characters; tab and newline are kept (CRLF becomes a newline)."""
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (every line break a space, tabs too), printable, at most ``limit``
    characters (a cut is marked with an ellipsis)."""
    flat = printable(" ".join(text.splitlines()).replace("\t", " ")).strip()
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def markdown_inline(text: str, limit: int = 2000) -> str:
    """For a heading, list item, blockquote line or table cell of a report, after our own text on
    that line: one line, with every character markdown could read as syntax backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", one_line(text, limit))


def markdown_code(text: str, info: str = "") -> str:
    """A fenced code block showing ``text`` exactly (controls removed): its fence is one backtick
    longer than the longest run of backticks inside, so no line of the text can close it."""
    body = printable(text).rstrip("\n")
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{body}\n{fence}"


def terminal_text(text: str, style: str = "") -> Text:
    """For the console: a rich Text, so ``[bold red]`` and ``:emoji:`` print literally, without the
    escape sequences that could move the cursor, retitle the window or write the clipboard."""
    return Text(printable(text), style=style)


def commit_subject(text: str) -> str:
    """A commit subject: one printable line of at most 200 characters, never empty."""
    return one_line(text, 200) or "(untitled)"


def commit_body(text: str, limit: int = 4000) -> str:
    """Model text for the body of a commit message, every line indented by four spaces: no line
    can then start with mbox's ``From ``, a patch (``diff --git``, ``---``, ``+++``, ``Index:``,
    ``@@``) or an ``Autoresearch-*:`` trailer, and git shows it as a quote. Blank lines stay blank;
    at most ``limit`` characters of the text are kept."""
    cut = text if len(text) <= limit else text[:limit] + "…"
    lines = [printable(line).rstrip() for line in cut.strip("\n").splitlines()]
    return "\n".join(f"    {line}" if line.strip() else "" for line in lines)
