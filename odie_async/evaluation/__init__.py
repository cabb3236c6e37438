"""The paper's metrics: table parsing, the header (encoder) and content (ROUGE) scores."""
