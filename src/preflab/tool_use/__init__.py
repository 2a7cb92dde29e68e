"""Tool-use and code recipes that are whole programs (`preflab train` with `task: <recipe>`, see preflab.recipes):
OTC (seed #41, tool-efficiency rewards on GRPO), DSTC (seed #25, pairs from self-generated code and tests) and
iTool (seed #37, MCTS step pairs + SimPO). The pieces they share live lower down: preflab.tools (the tool interface),
preflab.verifiers (the OTC reward, the DSTC pair builder), preflab.sandbox (where model-written code runs)."""
