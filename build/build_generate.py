"""`make build`'s entry point for the generate model: weights, tokenizer, step profiles, config.

    python build/build_generate.py --model tiny --out model_repository/generate
    python build/build_generate.py --model gemma-3-1b --device cuda --slots 64 --out model_repository/generate

The logic lives in ``llmprofiles.generation.build`` (importable and tested); see --help.
"""

from llmprofiles.generation.build import main

if __name__ == "__main__":
    main()
