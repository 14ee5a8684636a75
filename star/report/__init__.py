"""Tables, figures and the HTML report made from result files (star table | figure | report)."""
