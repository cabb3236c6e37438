"""A mock teacher that answers every pipeline stage plausibly, for tests and dry runs.

Plug it into ``MockServer(responder=PipelineResponder(prompts))``. It tells the
stage from the request's system prompt (compared with the stage templates), and
answers deterministically from a digest of the body: instructions built from a
small vocabulary, texts that state each requested attribute of a few entities,
tables read back from those texts, paraphrases, and judge scores. A share of
answers is deliberately imperfect (a list answer one line short, prose instead
of a table, too many N/A cells, a near-duplicate instruction, tables wrapped in
fences and chatter) so the re-ask, the parser and the filter get exercised.
With a ``json_schema`` response format it answers in the stage's JSON shape, and
with ``n`` in the body the mock server asks it once per choice.

``wrong_share`` makes that share of its first answers (not a candidate round's, not
a repair turn's) wrong in the ways the quality gate catches, drawn from the digest
of the body and ``seed``: a table of values not in the text, another record's
table, one cell repeated everywhere, a refusal; in a paraphrase chunk, two
requests' rewrites swapped.
"""

from __future__ import annotations

import hashlib
import random
import re

import orjson

from ..endpoints.schema_fill import instance_for_schema
from ..evaluation.tables import parse_table, render
from .prompts import Prompts
from .registry import STAGES

DOMAINS = ["marine biology", "urban planning", "esports", "beekeeping", "aviation safety", "vintage cars",
           "public health", "amateur astronomy", "coffee trade", "railway history", "wine tasting",
           "robotics contests", "museum archives", "solar energy", "mountain rescue", "jazz festivals",
           "textile mills", "chess clubs", "river ferries", "seed banks"]
ENTITIES = ["team", "vessel", "station", "project", "festival", "device", "site", "product", "club", "mill"]
ATTRIBUTES = ["location", "year", "budget", "capacity", "leader", "status", "duration", "rating", "price", "length"]
DOCS = ["report", "newsletter", "article", "memo", "review", "bulletin"]
TEMPLATES = [
    "Extract the {a}, {b} and {c} of every {e} described in the {d}.",
    "List each {e} in this {d} together with its {a}, {b} and {c}.",
    "Build a table of the {e}s mentioned, giving {a} and {b} for each one.",
    "From the {d} on {domain}, pull out {a}, {b}, {c} per {e}.",
    "I need the {a}, {b} and {c} for each {e} named in the text.",
    "Which {e}s appear here? Tabulate their {a} and {c}.",
    "For my {q} notes on {domain}: what {a} and {b} does each {e} have?",
    "Compare all {e}s by {a}, {b} and {c}, as reported in this {d}.",
    "Go through the {d} and record, {e} by {e}, the {a} and the {c}.",
    "Show me a {q} overview: {e} name, {a}, {b}.",
    "Summarise the {d}'s {e}s with columns for {a}, {b} and {c}.",
    "Put every {e}'s {b} and {a} from this {q} {d} into a table.",
]
QUALIFIERS = ["weekly", "quarterly", "internal", "draft", "board", "field", "archive", "client", "audit", "team"]
NAMES = ["Alder", "Birch", "Cedar", "Dune", "Ember", "Fjord", "Garnet", "Heron", "Iris", "Juniper", "Kestrel", "Lumen"]
CITIES = ["Oslo", "Lyon", "Porto", "Graz", "Turku", "Bergen", "Cork", "Ghent"]
PEOPLE = ["Ana Ruiz", "Tom Berg", "Mia Chen", "Ola Nord", "Eva Klein", "Sam Idris"]


def _value(attribute: str, rng: random.Random) -> str:
    makers = {
        "location": lambda: rng.choice(CITIES), "year": lambda: str(rng.randint(1950, 2024)),
        "budget": lambda: f"${rng.randint(2, 90)} million", "capacity": lambda: f"{rng.randint(20, 900)} people",
        "leader": lambda: rng.choice(PEOPLE), "status": lambda: rng.choice(["active", "paused", "completed"]),
        "duration": lambda: f"{rng.randint(2, 30)} months", "rating": lambda: f"{rng.randint(1, 5)} stars",
        "price": lambda: f"${rng.randint(5, 500)}", "length": lambda: f"{rng.randint(10, 400)} meters",
    }
    return makers[attribute]()


class PipelineResponder:
    """``responder(body) -> content`` for ``MockServer``."""

    def __init__(self, prompts: Prompts, wrong_share: float = 0.0, seed: int = 0) -> None:
        systems = {stage: prompts.fill(stage, "system") for stage in STAGES}
        self._systems = sorted(systems.items(), key=lambda item: -len(item[1]))
        self.wrong_share, self.seed = wrong_share, seed
        self._repair = {s: prompts.fill(s, "repair", problems="", format="")[:20] for s in ("tables", "tables_cot")}
        self._retry = prompts.fill("paraphrase", "retry")

    def stage_of(self, body: dict) -> str | None:
        """The stage a request belongs to, from its system prompt."""
        messages = body.get("messages") or []
        first = messages[0].get("content") if messages and messages[0].get("role") == "system" else ""
        return next((stage for stage, text in self._systems if first and first.startswith(text)), None)

    def __call__(self, body: dict) -> str:
        stage = self.stage_of(body)
        rng = random.Random(hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=8).digest())
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
        handler = getattr(self, f"_{stage}", None) if stage else None
        if handler is None:
            return orjson.dumps(instance_for_schema(schema, rng.randrange(1 << 30))).decode() if schema else "OK."
        if stage in ("tables", "tables_cot") and self._wrong(body, stage):
            return self._wrong_table(body, rng, schema is not None, stage)
        return handler(body, rng, schema is not None, schema)

    def _wrong(self, body: dict, stage: str) -> bool:
        """Whether this first answer is one of the ``wrong_share`` made wrong."""
        if not self.wrong_share or body.get("n", 1) != 1 or _last_user(body).startswith(self._repair.get(stage, "\0")):
            return False
        if stage == "paraphrase" and self._retry in _last_user(body):
            return False
        digest = hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()
        return random.Random(f"{self.seed}:wrong:{digest}").random() < self.wrong_share

    def _wrong_table(self, body, rng, as_json, stage) -> str:
        header, rows = self._table(body, random.Random(rng.random()), faults=False)
        kind = rng.choice(["not_in_text", "other_table", "repeated", "refusal"])
        if kind == "refusal" or not rows:
            return "I am sorry, but I cannot help with that request."
        if kind == "not_in_text":
            rows = [[f"Q{rng.randint(100, 999)}"] + [f"{rng.randint(1000, 9999)} units" for _ in row[1:]] for row in rows]
        elif kind == "other_table":
            others = [a for a in ATTRIBUTES if a.title() not in header][:len(header) - 1]
            header = [header[0]] + [a.title() for a in others]
            rows = [[row[0]] + [_value(a, rng) + " (est.)" for a in others] for row in rows]
        else:
            rows = [[rows[0][1]] * len(row) for row in rows]
        table = {"header": header, "rows": rows}
        explanation = "The table below lists what the text gives for each entry, one row per entry."
        if as_json:
            return orjson.dumps(({"explanation": explanation} if stage == "tables_cot" else {}) | {"table": table}).decode()
        markdown = render(header, rows)
        return f"{explanation}\n\n{markdown}" if stage == "tables_cot" else markdown

    # -- stages --------------------------------------------------------------------------

    def _instructions(self, body, rng, as_json, schema) -> str:
        count = (schema or {}).get("properties", {}).get("instructions", {}).get("maxItems")
        if count is None:
            found = re.search(r"Write (\d+) new", _last_user(body))
            count = int(found.group(1)) if found else 10
        items = [self._instruction(rng) for _ in range(count - 1)]
        items.append((items[0][0], "Please " + items[0][1][0].lower() + items[0][1][1:]))  # a near duplicate
        if as_json:
            return orjson.dumps({"instructions": [{"domain": d, "instruction": i} for d, i in items]}).decode()
        return "\n".join(f"{n}. Domain: {d}\nInstruction: {i}" for n, (d, i) in enumerate(items, 1))

    def _instruction(self, rng) -> tuple[str, str]:
        domain = rng.choice(DOMAINS)
        a, b, c = rng.sample(ATTRIBUTES, 3)
        text = rng.choice(TEMPLATES).format(a=a, b=b, c=c, e=rng.choice(ENTITIES), d=rng.choice(DOCS), domain=domain,
                                            q=rng.choice(QUALIFIERS))
        return domain, text

    def _texts(self, body, rng, as_json, schema) -> str:
        request = _last_user(body)
        instruction = re.search(r"Request:\s*(.+)", request)
        wanted = _attributes(instruction.group(1) if instruction else request) or rng.sample(ATTRIBUTES, 2)
        domain = re.search(r"Domain:\s*(.+)", request)
        entity = next((e for e in ENTITIES if e in request), "item")
        extra = [a for a in ATTRIBUTES if a not in wanted][:1]
        lines = [f"This {rng.choice(DOCS)} covers recent work in {domain.group(1).strip() if domain else 'the field'}."]
        for name in rng.sample(NAMES, rng.randint(2, 4)):
            facts = [f"{attribute} {_value(attribute, rng)}" for attribute in wanted + extra]
            lines.append(f"The {entity} {name} has {', '.join(facts[:-1])} and {facts[-1]}.")
        lines.append("Further updates will follow in the next issue.")
        return " ".join(lines)

    def _open_instructions(self, body, rng, as_json, schema) -> str:
        entity = re.search(r"The (\w+) [A-Z]\w+ has", _last_user(body))
        noun = entity.group(1) if entity else "item"
        return rng.choice([f"Extract the key details of each {noun} from this text.",
                           f"Summarise what the text says about every {noun} in a table.",
                           f"Pull out the important facts on each {noun} mentioned."])

    def _paraphrase(self, body, rng, as_json, schema) -> str:
        prompt = _last_user(body)
        items = re.findall(r"^(\d+)\.\s+(.+)$", prompt, flags=re.M)
        lead = rng.choice(["Could you", "Please", "Hey, can you", "Kindly"])
        rewritten = [(int(n), f"{lead} {item[0].lower()}{item[1:]}") for n, item in items]
        first = self._retry not in prompt
        if first and len(rewritten) > 1 and self.wrong_share and self._wrong(body, "paraphrase"):
            (a, ta), (b, tb) = rewritten[0], rewritten[1]
            rewritten[0], rewritten[1] = (a, tb), (b, ta)  # two requests' rewrites swapped, numbers kept
        if as_json:
            return orjson.dumps({"paraphrases": [{"id": n, "request": t} for n, t in rewritten]}).decode()
        if first and rng.random() < 0.3:
            rewritten = rewritten[:-1]  # one line short: the pipeline must ask again
        return "\n".join(f"{n}. {text}" for n, text in rewritten)

    def _table(self, body, rng, faults: bool = True) -> tuple[list[str], list[list[str]]]:
        instruction, _, text = _last_user(body).partition("\n\n")
        found = re.findall(r"The (\w+) ([A-Z]\w+) has ([^.]+)\.", text)
        wanted = _attributes(instruction) or _attributes(text)
        header = [(found[0][0] if found else "item").title()] + [a.title() for a in wanted]
        rows = []
        for _entity, name, facts in found:
            values = dict(_split_fact(part) for part in re.split(r", | and ", facts) if _split_fact(part))
            rows.append([name] + [values.get(a, "N/A") for a in wanted])
        if faults and rng.random() < 0.12 and rows:
            rows = [[row[0]] + ["N/A"] * (len(row) - 1) for row in rows]
        return header, rows

    def _tables(self, body, rng, as_json, schema) -> str:
        header, rows = self._table(body, rng)
        if as_json:
            return orjson.dumps({"table": {"header": header, "rows": rows}}).decode()
        roll = rng.random()
        if roll < 0.1:
            return "I am sorry, but I could not find the requested information in the text."
        markdown = render(header, rows)
        return f"Table:\n```markdown\n{markdown}\n```\nLet me know if you need more detail." if roll < 0.3 else markdown

    def _tables_cot(self, body, rng, as_json, schema) -> str:
        header, rows = self._table(body, rng)
        explanation = (f"The instruction asks for {', '.join(h.lower() for h in header[1:])} of each "
                       f"{header[0].lower()}; the text states them in one sentence per {header[0].lower()}.")
        if as_json:
            return orjson.dumps({"explanation": explanation, "table": {"header": header, "rows": rows}}).decode()
        return f"{explanation}\n\n{render(header, rows)}"

    def _judge(self, body, rng, as_json, schema) -> str:
        prompt = _last_user(body)
        instruction = re.search(r"Instruction:\s*(.+)", prompt)
        text = re.search(r"Text:\n(.+?)\n\nTable:", prompt, flags=re.S)
        table = parse_table(prompt.split("Table:", 1)[-1], strict=False)
        asked = set(_attributes(instruction.group(1) if instruction else ""))
        columns = [h.lower() for h in table.header[1:]]
        consistent = bool(columns) and sum(c in asked for c in columns) >= len(columns) / 2
        cells = [c for c in table.cells() if c != "N/A"]
        supported = sum(c in (text.group(1) if text else "") for c in cells) >= 0.8 * max(1, len(cells))
        scores = {"consistency": 5 if consistent else 2, "faithfulness": 5 if supported else 2}
        if "consistency" not in prompt.split("Table:", 1)[-1]:
            scores.pop("consistency")
        if as_json:
            return orjson.dumps(scores).decode()
        return "\n".join(f"{name}: {value}" for name, value in scores.items())


def _last_user(body: dict) -> str:
    return next((m["content"] for m in reversed(body.get("messages") or []) if m.get("role") == "user"), "")


def _attributes(text: str) -> list[str]:
    return sorted((a for a in ATTRIBUTES if re.search(rf"\b{a}\b", text.lower())), key=lambda a: text.lower().find(a))


def _split_fact(part: str) -> tuple[str, str] | None:
    attribute, _, value = part.strip().partition(" ")
    return (attribute, value) if attribute in ATTRIBUTES and value else None
