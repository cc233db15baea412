"""`make build`'s entry point: build one multi-profile engine into a Triton model folder.

    python build/build_engine.py --model tiny --profile-set multi --out model_repository/llm
    python build/build_engine.py --model gemma-3-1b --device cuda --profile-set single --out model_repository/llm_single

The logic lives in ``llmprofiles.build`` (importable and tested); see --help.
"""

from llmprofiles.build import main

if __name__ == "__main__":
    main()
