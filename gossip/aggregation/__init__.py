"""How a peer weighs and folds its neighbours' updates: one policy per module behind one base class."""
