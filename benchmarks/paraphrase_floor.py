"""Calibrate ``verify.paraphrase_similarity``: how close a paraphrase must stay to its own original.

Negatives are another record's instruction in place of a paraphrase (every pair of
distinct instructions of the InstructIE test set, and the pairs within one domain
alone, the hardest). Positives are restyled requests that change most of their
words (the four paraphrase styles of the generate stage), written for this script.
For each floor it prints the share of positives kept and of swaps caught.

    python benchmarks/paraphrase_floor.py [--test-data ../shared/instructie/test_data.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

POSITIVES = [
    ("List every treatment arm of the trial with its drug, daily dose and number of enrolled patients.",
     "Which arms did the study have, and what medication, how much per day and how many people was each one?"),
    ("Extract the name, founding year and headquarters of every company mentioned.",
     "Please pull out, for each firm the article talks about, when it was set up and where its main office is."),
    ("Summarize the collected data, focusing on symptoms, the affected country, the virus involved, and prevention measures.",
     "Could you tabulate what the reports say about the illness signs, where it happened, the pathogen and how to avoid it?"),
    ("Mine AI research papers to extract tasks, findings, and algorithms for performing meta-analyses.",
     "Go through these machine learning articles and note the problems tackled, the results and the methods used."),
    ("Give the opponent, score and venue of each match the club played this season.",
     "Who did the team face in each game this year, where was it held and how did it end?"),
    ("Extract the title, author, publisher and price of each book reviewed.",
     "Please list the reviewed novels together with who wrote them, which house published them and what they cost."),
    ("What are the departure time, destination and platform of every train in the timetable?",
     "Show me, train by train, when it leaves, where it goes and which track it uses."),
    ("Identify the symptoms, dosage and side effects reported for each medication in the leaflet.",
     "For every drug the leaflet covers, tell me what it treats, how much to take and the adverse reactions."),
    ("Collect the species, population count and habitat for each animal in the field survey.",
     "Hey, can you note how many of each creature the survey counted and where they live?"),
    ("Pull out each speaker's name, affiliation and talk title from the conference programme.",
     "Kindly tabulate who is presenting at the event, which organisation they come from and what their session is called."),
    ("Extract the date, location, magnitude and casualties of each earthquake in the report.",
     "When and where did each quake strike, how strong was it and how many people died?"),
    ("List the ingredients and their quantities for every recipe in the article.",
     "Please give me what goes into each dish described and how much of it is needed."),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-data", default="../shared/instructie/test_data.json")
    args = parser.parse_args()
    from odie_async.evaluation.embedder import get_embedder

    items = json.loads(Path(args.test_data).read_text())
    instructions = [item["instruction"] for item in items]
    embed = get_embedder().encode
    vectors = embed(instructions)
    sims = vectors @ vectors.T
    pairs = list(itertools.combinations(range(len(items)), 2))
    all_neg = np.array([sims[i, j] for i, j in pairs])
    same = np.array([sims[i, j] for i, j in pairs if items[i]["domain"] == items[j]["domain"]])
    left, right = embed([a for a, _ in POSITIVES]), embed([b for _, b in POSITIVES])
    pos = (left * right).sum(axis=1)
    print(f"positives {len(pos)}: min {pos.min():.3f} median {np.median(pos):.3f}")
    print(f"swaps {len(all_neg)} (same domain {len(same)}): p95 {np.quantile(all_neg, .95):.3f} "
          f"p99 {np.quantile(all_neg, .99):.3f}; same-domain p95 {np.quantile(same, .95) if len(same) else float('nan'):.3f}")
    print("floor  positives kept  swaps caught  same-domain swaps caught")
    for floor in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6):
        caught_same = (same < floor).mean() if len(same) else float("nan")
        print(f"{floor:.2f}   {(pos >= floor).mean():.3f}           {(all_neg < floor).mean():.3f}         {caught_same:.3f}")


if __name__ == "__main__":
    main()
