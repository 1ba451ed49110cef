"""CDK app deploying the Nepting Cloud API; ``build.build_app()`` is what ``infra/app.py`` synthesizes."""
