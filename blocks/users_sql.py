"""The SQL text of a users/roles backup: split, attribute to accounts, filter, mask.

Pure code, no server needed. A globals script is a list of statements;
each belongs to one account (a PostgreSQL role, a MySQL `user@host` or role),
to the session (`SET ...`), or to the server (PostgreSQL tablespaces). The
scanner knows just enough SQL lexing (quotes, comments, psql meta lines) to
find statement ends and the account a statement is about. Where the engines'
dialects differ, one `UsersSql` object per engine (`Engine.users_sql`) knows.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

Scope = Literal["session", "account", "server"]

MASK = "'***'"
# a string or hex literal right after one of these words is a password or a hash
SECRET_AFTER = {"PASSWORD", "USING", "AS"}
_WORD = re.compile(r"[A-Za-z0-9_$.]+")
_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}


@dataclass(frozen=True)
class Statement:
    """One statement of a globals script and what it is about."""

    text: str
    scope: Scope
    subject: str | None = None  # the account of an 'account' statement: role, or user@host
    user: str | None = None  # the subject's name without its host


def _closing(text: str, start: int, quote: str, backslash: bool) -> int:
    """Index just after the literal or quoted identifier opening at start."""
    i = start + 1
    while i < len(text):
        ch = text[i]
        if backslash and ch == "\\":
            i += 2
            continue
        if ch == quote:
            if text[i + 1 : i + 2] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return len(text)


Account = tuple[str, str]  # (subject, user)
Token = tuple[str, str]  # (kind, text), see UsersSql.scan


def _after(tokens: list[Token], words: tuple[str, ...], last: bool = False) -> int | None:
    """Index just after the (first or last) run of keywords `words` among tokens."""
    found = None
    for i in range(len(tokens) - len(words) + 1):
        if all(
            tokens[i + k][0] == "word" and tokens[i + k][1].upper() == w
            for k, w in enumerate(words)
        ):
            found = i + len(words)
            if not last:
                return found
    return found


class UsersSql(ABC):
    """One engine's SQL dialect as its globals scripts are written: how statements are
    lexed, which account a statement is about, where passwords are. One instance per
    engine (`Engine.users_sql`): callers ask it, never test the engine's name."""

    hash_comments: ClassVar[bool] = False  # `#` starts a comment
    backslash_escapes: ClassVar[bool] = False  # `\` escapes in '...' and "..." literals
    double_quoted_strings: ClassVar[bool] = False  # "..." is a string, not an identifier
    meta_lines: ClassVar[bool] = False  # a line starting with `\` is a psql meta-command

    @abstractmethod
    def _subject(self, tokens: list[Token], head: list[str]) -> Account | None:
        """The account a (non-session) statement is about, or None: it is the server's."""

    def scan(self, text: str) -> Iterator[Token]:
        """(kind, text) tokens: space, comment, meta, string, ident, hex, word, punct."""
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch.isspace():
                j = i
                while j < n and text[j].isspace():
                    j += 1
                yield "space", text[i:j]
            elif text.startswith("--", i) or (self.hash_comments and ch == "#"):
                j = text.find("\n", i)
                j = n if j < 0 else j
                yield "comment", text[i:j]
            elif text.startswith("/*", i):
                j = text.find("*/", i + 2)
                j = n if j < 0 else j + 2
                yield "comment", text[i:j]
            elif ch == "\\" and self.meta_lines and (i == 0 or text[i - 1] == "\n"):
                j = text.find("\n", i)  # psql meta-command such as \restrict (pg_dumpall 15.14+)
                j = n if j < 0 else j
                yield "meta", text[i:j]
            elif ch in "'\"`":
                string = ch == "'" or (self.double_quoted_strings and ch == '"')
                j = _closing(text, i, ch, backslash=self.backslash_escapes and ch != "`")
                yield ("string" if string else "ident"), text[i:j]
            elif match := _WORD.match(text, i):
                j = match.end()
                word = text[i:j]
                yield ("hex" if re.fullmatch(r"0x[0-9A-Fa-f]+", word) else "word"), word
            else:
                j = i + 1
                yield "punct", ch
            i = j

    def split_statements(self, script: str) -> list[str]:
        """The statements of a script, without their ';' and without comments before them."""
        statements: list[str] = []
        current: list[str] = []
        for kind, text in self.scan(script):
            if kind == "punct" and text == ";":
                if stmt := "".join(current).strip():
                    statements.append(stmt)
                current = []
            elif kind in ("comment", "meta") and not "".join(current).strip():
                current = []
            else:
                current.append(text)
        if stmt := "".join(current).strip():
            statements.append(stmt)
        return statements

    def unquote(self, token: str) -> str:
        """The name or value a quoted identifier or string literal stands for."""
        if not token or token[0] not in "'\"`":
            return token
        quote, body = token[0], token[1:-1]
        if quote == "`":
            return body.replace("``", "`")
        out, i = [], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\" and self.backslash_escapes and i + 1 < len(body):
                out.append(_ESCAPES.get(body[i + 1], body[i + 1]))
                i += 2
                continue
            if ch == quote and body[i + 1 : i + 2] == quote:
                i += 1
            out.append(ch)
            i += 1
        return "".join(out)

    def _account_at(self, tokens: list[Token], i: int) -> Account | None:
        """The account named at tokens[i]: `name` or `user`@`host`."""
        if i >= len(tokens) or tokens[i][0] not in ("word", "ident", "string"):
            return None
        name = self.unquote(tokens[i][1])
        if i + 2 < len(tokens) and tokens[i + 1] == ("punct", "@"):
            return f"{name}@{self.unquote(tokens[i + 2][1])}", name
        return name, name

    def classify(self, stmt: str) -> Statement:
        """Attribute one statement to an account, the session or the server."""
        tokens = [t for t in self.scan(stmt) if t[0] not in ("space", "comment")]
        head = [t[1].upper() for t in tokens[:3] if t[0] == "word"]
        if head[:1] == ["SET"] and head[1:3] != ["DEFAULT", "ROLE"]:
            return Statement(stmt, "session")
        account = self._subject(tokens, head)
        if account is None:
            return Statement(stmt, "server")
        return Statement(stmt, "account", *account)

    def parse_script(self, script: str) -> list[Statement]:
        """Every statement of a stored globals script, classified."""
        return [self.classify(s) for s in self.split_statements(script)]

    def _secret_tokens(self, stmt: str) -> list[int]:
        """Indexes (in scan order) of the literals that hold a password or hash."""
        found, words = [], ["", ""]
        for i, (kind, text) in enumerate(self.scan(stmt)):
            if kind in ("space", "comment") or (kind == "punct" and text == "("):
                continue
            if kind in ("string", "hex") and (
                words[-1] in SECRET_AFTER or words[-2:] == ["IDENTIFIED", "BY"]
            ):
                found.append(i)
            words.append(text.upper() if kind == "word" else "")
        return found

    def mask(self, stmt: str) -> str:
        """The statement with every password and hash replaced by '***'."""
        hidden = set(self._secret_tokens(stmt))
        tokens = enumerate(self.scan(stmt))
        return "".join(MASK if i in hidden else text for i, (_, text) in tokens)

    def secrets_of(self, stmt: str) -> list[str]:
        """The passwords and hashes in a statement (to redact them from error messages)."""
        tokens = list(self.scan(stmt))
        found = []
        for i in self._secret_tokens(stmt):
            text = tokens[i][1]
            found += [text, self.unquote(text)] if tokens[i][0] == "string" else [text]
        return [s for s in found if s.strip("'\"")]


class PostgresUsersSql(UsersSql):
    """pg_dumpall's roles script: standard strings, "..." identifiers, psql meta lines."""

    meta_lines = True

    def _subject(self, tokens: list[Token], head: list[str]) -> Account | None:
        if head[:1] == ["GRANT"]:
            if _after(tokens, ("ON",)) is not None:
                return None  # a privilege on a tablespace
            i = _after(tokens, ("TO",))
            return self._account_at(tokens, i) if i is not None else None
        for i, (kind, text) in enumerate(tokens[:6]):
            if kind == "word" and text.upper() == "TABLESPACE":
                return None
            if kind == "word" and text.upper() == "ROLE":
                return self._account_at(tokens, i + 1)
        return None


class MySQLUsersSql(UsersSql):
    """SHOW CREATE USER / SHOW GRANTS statements: `#` comments, backslash escapes,
    "..." strings, accounts as `user`@`host`."""

    hash_comments = True
    backslash_escapes = True
    double_quoted_strings = True

    def _subject(self, tokens: list[Token], head: list[str]) -> Account | None:
        if head[:1] == ["GRANT"]:
            i = _after(tokens, ("TO",), last=True)
        elif head[:3] == ["SET", "DEFAULT", "ROLE"]:
            i = _after(tokens, ("FOR",), last=True)
        elif head[:1] in (["CREATE"], ["ALTER"]):
            i = 2
            for words in (("IF", "NOT", "EXISTS"), ("IF", "EXISTS")):
                if _after(tokens[2 : 2 + len(words)], words) is not None:
                    i = 2 + len(words)
        else:
            return None
        return self._account_at(tokens, i) if i is not None else None


POSTGRES_SQL = PostgresUsersSql()
MYSQL_SQL = MySQLUsersSql()


def render(statements: list[Statement], header: str) -> str:
    """A replayable script: a comment line, then one statement per entry."""
    return f"-- {header}\n" + "".join(f"{s.text};\n" for s in statements)


def matches(statement: Statement, names: list[str]) -> bool:
    """Whether a statement's account is one of names (a MySQL name without '@host' means
    the user at every host)."""
    return statement.subject in names or statement.user in names


def select_statements(
    statements: list[Statement], users: list[str] | None, keep: Callable[[str], bool]
) -> list[Statement]:
    """Session statements, the accounts whose name keep() accepts (and among users, if given), and
    server statements (tablespaces) only when no user filter is given."""
    chosen = []
    for s in statements:
        if s.scope == "session":
            chosen.append(s)
        elif s.scope == "server":
            if not users:
                chosen.append(s)
        elif keep(s.user or "") and (not users or matches(s, users)):
            chosen.append(s)
    return chosen


def mysql_text(raw: bytes) -> str:
    """SHOW CREATE USER / SHOW GRANTS output as script text.

    A string literal whose bytes are not printable UTF-8 (a binary hash, as
    caching_sha2_password stores) becomes a hex literal 0x..., which MySQL
    accepts in its place and which survives any script handling.
    """
    try:
        text = raw.decode()
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    out = []
    for kind, token in MYSQL_SQL.scan(raw.decode("latin-1")):
        if kind == "string":
            value = MYSQL_SQL.unquote(token).encode("latin-1")
            try:
                printable = value.decode().isprintable()
            except UnicodeDecodeError:
                printable = False
            if not printable:
                out.append("0x" + value.hex())
                continue
        out.append(token.encode("latin-1").decode())
    return "".join(out)


@dataclass(frozen=True)
class MySQLAccount:
    """One MySQL/MariaDB account or role as SHOW CREATE USER and SHOW GRANTS describe it."""

    user: str
    host: str
    is_role: bool
    create: str | None  # SHOW CREATE USER (users only)
    grants: list[str]


def backtick(name: str) -> str:
    """A MySQL quoted identifier."""
    return "`" + name.replace("`", "``") + "`"


def mysql_script(accounts: list[MySQLAccount]) -> str:
    """A replayable, idempotent script: every role and user first (CREATE ... IF NOT EXISTS,
    then ALTER USER to set the password hash, plugin and limits), then every grant,
    then default roles (which need the role granted)."""
    creates, grants, defaults = [], [], []
    for account in accounts:
        if account.is_role:
            creates.append(f"CREATE ROLE IF NOT EXISTS {backtick(account.user)}")
        elif account.create:
            rest = account.create.split(" ", 2)[2]  # after 'CREATE USER'
            creates += [f"CREATE USER IF NOT EXISTS {rest}", f"ALTER USER {rest}"]
        for grant in account.grants:
            is_default = grant.upper().startswith("SET DEFAULT ROLE")
            (defaults if is_default else grants).append(grant)
    return "".join(f"{s};\n" for s in creates + grants + defaults)
