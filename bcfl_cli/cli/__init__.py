"""The Typer front end: parse, make one library call, render. No SQL, tensors or keys here."""
