"""The generation tabs (base model, finetuned model, side by side): ``tab`` builds them, ``handlers`` (``DemoApp``)
answers their events, ``models`` loads what is served, ``backends`` runs the generations."""
