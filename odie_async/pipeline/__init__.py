"""The six-stage InstructIE data pipeline behind ``odie generate``.

Fixed instructions → texts → open instructions → paraphrases → tables (plain and
chain-of-thought) → filter, streamed record by record through one checkpointed
``Engine``; see ``flow.py`` for how the stages feed each other.
"""
