"""An instruction task from human-written text every Python install carries: standard-library docstrings and the
``pydoc`` help topics. "What does `json.dumps` do?" -> the first paragraph of its docstring."""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import pkgutil
import random
import re
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

__all__ = ["instruction_task", "stdlib_documentation"]

# Modules skipped: side effects on import (antigravity opens a browser, this prints), GUI toolkits, test suites,
# and packages deprecated or removed across Python versions.
_SKIP = {
    "antigravity", "this", "idlelib", "turtledemo", "turtle", "tkinter", "test", "lib2to3", "ensurepip",
    "pydoc_data", "xxlimited", "xxlimited_35", "xxsubtype", "msilib", "nturl2path", "sre_compile",
    "sre_constants", "sre_parse", "distutils", "imp", "asynchat", "asyncore", "smtpd",
}
_QUESTIONS = {
    "function": ["What does `{name}` do?", "Explain the Python function `{name}`.",
                 "In Python, what is `{name}` used for?", "Describe what `{name}` does in the standard library."],
    "class": ["What is `{name}` in Python?", "Explain the class `{name}`.",
              "What does the standard-library class `{name}` represent?", "Describe `{name}`."],
    "method": ["What does the method `{name}` do?", "Explain `{name}`.", "What is `{name}` for?",
               "In Python, what happens when you call `{name}`?"],
    "module": ["What is the Python module `{name}` for?", "Describe the `{name}` module.",
               "What does the standard-library module `{name}` provide?"],
    "topic": ["Explain the Python topic '{name}'.", "What does the Python language reference say about {name}?"],
}
# How users spell the modules whose objects live in C modules of another name.
_DISPLAY = {"posix": "os", "posixpath": "os.path", "builtins": ""}
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")


def instruction_task(n: int = 3000, *, seed: int = 0) -> Any:
    """Up to ``n`` question/answer pairs about the Python standard library as a ``datasets.Dataset``.

    Columns: ``messages`` (user question, assistant answer), ``name`` (e.g. ``json.dumps``), ``module``,
    ``kind`` (``function``, ``class``, ``method``, ``module`` or ``topic``). Answers are the first paragraph of
    the real docstring (or help topic), written by the CPython authors. Deterministic for one Python version;
    asking for more than exist returns them all (several thousand).
    """
    from datasets import Dataset

    if n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    entries = list(stdlib_documentation())
    rng = random.Random(seed)
    rng.shuffle(entries)
    rows = []
    for name, module, kind, text in entries[:n]:
        question = rng.choice(_QUESTIONS[kind]).format(name=name)
        rows.append({
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": text}],
            "name": name, "module": module, "kind": kind,
        })
    return Dataset.from_list(rows)


@functools.lru_cache(maxsize=1)
def stdlib_documentation() -> tuple[tuple[str, str, str, str], ...]:
    """``(name, module, kind, first paragraph)`` for documented public objects of the standard library, sorted,
    one per distinct paragraph. Imports each module once (about a second)."""
    found: dict[str, tuple[str, str, str, str]] = {}
    for module_name in _module_names():
        module = _import_quietly(module_name)
        if module is None:
            continue
        _add(found, module_name, module_name, "module", module)
        prefix = _DISPLAY.get(module_name, module_name)
        for attr, obj in _public_members(module, module_name):
            qualified = f"{prefix}.{attr}" if prefix else attr
            if inspect.isclass(obj):
                _add(found, qualified, module_name, "class", obj)
                for method_name, method in _public_members(obj, module_name):
                    if inspect.isroutine(method):
                        _add(found, f"{qualified}.{method_name}", module_name, "method", method)
            elif inspect.isroutine(obj):
                _add(found, qualified, module_name, "function", obj)
    for topic, text in _help_topics():
        paragraph = _first_paragraph(text)
        if paragraph and paragraph not in found:
            found[paragraph] = (topic, "pydoc", "topic", paragraph)
    return tuple(sorted(found.values()))


def _module_names() -> list[str]:
    """Public top-level stdlib modules, then the public submodules of stdlib packages (not their tests)."""
    names = getattr(sys, "stdlib_module_names", None) or sys.builtin_module_names
    top = sorted(name for name in names if not name.startswith("_") and name not in _SKIP)
    submodules = []
    for name in top:
        package = _import_quietly(name)
        for info in pkgutil.walk_packages(getattr(package, "__path__", None) or [], prefix=name + ".",
                                          onerror=lambda _: None):
            parts = info.name.split(".")
            if not any(part.startswith("_") or part in _SKIP or "test" in part for part in parts[1:]):
                submodules.append(info.name)
    return top + sorted(submodules)


def _import_quietly(name: str) -> Any:
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception:  # a module missing from this build (winreg, readline...) is simply not used
            return None


def _public_members(owner: Any, module_name: str) -> list[tuple[str, Any]]:
    """Public attributes of a class, or of a module when defined there (or in its C accelerator ``_name``)."""
    home_names = None
    if inspect.ismodule(owner):
        home_names = {owner.__name__, "_" + owner.__name__, module_name}
    members = []
    for attr, obj in sorted(vars(owner).items()):
        if attr.startswith("_"):
            continue
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if home_names is not None and getattr(obj, "__module__", None) not in home_names:
            continue
        members.append((attr, obj))
    return members


def _add(found: dict, name: str, module: str, kind: str, obj: Any) -> None:
    try:
        doc = inspect.getdoc(obj)
    except Exception:
        return
    paragraph = _first_paragraph(doc or "")
    if paragraph and paragraph not in found:
        found[paragraph] = (name, module, kind, paragraph)


def _first_paragraph(doc: str) -> str | None:
    """The first prose paragraph, on one line; ``None`` if it is a bare signature, too short or too long."""
    for block in re.split(r"\n\s*\n", doc.strip()):
        lines = [line.strip() for line in block.strip().splitlines()]
        if not lines or all(_SIGNATURE.match(line) for line in lines):
            continue
        text = " ".join(lines)
        if 40 <= len(text) <= 700 and not text.startswith((">>>", "..", "-", "*", "Copyright")):
            return text
        return None
    return None


def _help_topics() -> list[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return sorted((name.replace("-", " "), text) for name, text in topics.items())
