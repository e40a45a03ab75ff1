ALTER FUNCTION job_heads_refresh(TEXT[]) SECURITY INVOKER RESET search_path;
