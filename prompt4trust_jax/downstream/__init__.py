"""The frozen downstream's side of a step: the answerer and its elicitation modes
(`answerer`), image files (`images`), response parsers (`parsing`) and the tries that
constrain structured answers (`constraints`)."""
