use super::*;
use crate::action::DialStatusCallback;

/// `body` wrapped in `<Response>`.
fn doc(body: &str) -> String {
    format!("<Response>{body}</Response>")
}

fn one(body: &str) -> Verb {
    let mut verbs = parse_twiml(&doc(body)).unwrap();
    assert_eq!(verbs.len(), 1, "{verbs:?}");
    verbs.remove(0)
}

fn err(text: &str) -> TwimlError {
    parse_twiml(text).expect_err(text)
}

fn sip(uri: &str, username: Option<&str>, password: Option<&str>) -> DialNoun {
    let owned = |s: Option<&str>| s.map(str::to_owned);
    DialNoun::Sip {
        uri: uri.into(),
        username: owned(username),
        password: owned(password),
        registration: None,
        status_callback: None,
    }
}

#[test]
fn dial_through_a_registration_takes_an_extension() {
    let verbs = parse_twiml(&doc(r#"<Dial hangupOnStar="true" method="GET" action="https://x.example/a"><Sip registration="pbx-1001">sip:1002</Sip></Dial>"#)).unwrap();
    let Verb::Dial(dial) = &verbs[0] else {
        panic!("{verbs:?}")
    };
    assert!(dial.hangup_on_star && dial.method_get);
    assert_eq!(
        dial.target,
        DialNoun::Sip {
            uri: "sip:1002".into(),
            username: None,
            password: None,
            registration: Some("pbx-1001".into()),
            status_callback: None,
        }
    );
    let actions = actions_from_twiml(&verbs).unwrap();
    let Action::Dial(target) = &actions[0] else {
        panic!("{actions:?}")
    };
    assert_eq!(target.registration.as_deref(), Some("pbx-1001"));
}

#[test]
fn the_documented_example() {
    let text = "<Response><Dial><Sip>sip:agent@pbx;transport=tcp</Sip></Dial></Response>";
    let verbs = parse_twiml(text).unwrap();
    let expected = Dial {
        target: sip("sip:agent@pbx;transport=tcp", None, None),
        timeout_secs: 30,
        time_limit_secs: 14_400,
        caller_id: None,
        answer_on_bridge: false,
        action: None,
        method_get: false,
        hangup_on_star: false,
        record: None,
    };
    assert_eq!(verbs, vec![Verb::Dial(expected)]);
    let target = DialTarget {
        uri: "sip:agent@pbx;transport=tcp".into(),
        ..DialTarget::default()
    };
    assert_eq!(actions_from_twiml(&verbs), Ok(vec![Action::Dial(target)]));
}

#[test]
fn dial_attributes_and_sip_credentials() {
    let text = r#"<?xml version="1.0" encoding="UTF-8"?>
        <!-- transfer -->
        <Response>
          <Dial timeout="12" timeLimit="600" callerId="+15550001111" answerOnBridge="true"
                action="https://example.com/after?a=1&amp;b=2" method="POST" record="record-from-answer-dual">
            <Sip username="bob" password="p&lt;w&quot;d" statusCallback="https://x.example/cb">
              sips:agent@pbx.example.com;transport=tls;region=ie1?X-Case=42&amp;X-Lang=fr
            </Sip>
          </Dial>
        </Response>"#;
    let verbs = parse_twiml(text).unwrap();
    let [Verb::Dial(dial)] = verbs.as_slice() else {
        panic!("{verbs:?}")
    };
    let uri = "sips:agent@pbx.example.com;transport=tls;region=ie1?X-Case=42&X-Lang=fr";
    let mut expected = sip(uri, Some("bob"), Some("p<w\"d"));
    let callback = DialStatusCallback {
        url: "https://x.example/cb".into(),
        events: vec!["completed".into()],
        method_get: false,
    };
    if let DialNoun::Sip {
        status_callback, ..
    } = &mut expected
    {
        *status_callback = Some(callback.clone());
    }
    assert_eq!(dial.target, expected);
    assert_eq!((dial.timeout_secs, dial.time_limit_secs), (12, 600));
    assert_eq!(dial.caller_id.as_deref(), Some("+15550001111"));
    assert!(dial.answer_on_bridge);
    let action = dial.action.as_deref();
    assert_eq!(action, Some("https://example.com/after?a=1&b=2"));
    assert_eq!(dial.record.as_deref(), Some("record-from-answer-dual"));
    let target = DialTarget {
        uri: uri.into(),
        caller_id: Some("+15550001111".into()),
        username: Some("bob".into()),
        password: Some("p<w\"d".into()),
        timeout_secs: 12,
        time_limit_secs: 600,
        action: Some("https://example.com/after?a=1&b=2".into()),
        status_callback: Some(Box::new(callback)),
        ..DialTarget::default()
    };
    assert_eq!(actions_from_twiml(&verbs), Ok(vec![Action::Dial(target)]));
}

#[test]
fn escapes_in_text_cdata_and_char_refs() {
    let text = doc("<Dial><Sip>sip:a@b?X-A=1&amp;X-B=&#50;&#x33;</Sip></Dial>\
                    <Redirect><![CDATA[https://x.example/n?a=1&b=2]]></Redirect>");
    let verbs = parse_twiml(&text).unwrap();
    let Verb::Dial(dial) = &verbs[0] else {
        panic!("{verbs:?}")
    };
    assert_eq!(dial.target, sip("sip:a@b?X-A=1&X-B=23", None, None));
    let url = "https://x.example/n?a=1&b=2".to_owned();
    assert_eq!(verbs[1], Verb::Redirect { url });
    let bogus = err(&doc("<Dial><Sip>sip:a@b&bogus;</Sip></Dial>"));
    assert!(matches!(bogus, TwimlError::Malformed(_)), "{bogus:?}");
}

#[test]
fn every_verb() {
    let verbs = parse_twiml(&doc(
        r#"<Pause length="2"/><Play>https://x.example/hello.wav</Play>
        <Dial>+1 (555) 123-4567</Dial><Dial callerId="sip:bot@gw"><Number>+15550002222</Number></Dial>
        <Refer><Sip>sip:front@pbx</Sip></Refer>
        <Connect><Stream url="wss://bot.example/s"><Parameter name="k" value="v &amp; w"/>
          <Parameter name="empty"/></Stream></Connect>
        <Redirect method="POST">https://x.example/next</Redirect>
        <Reject reason="busy"/><Reject/><Hangup/><Pause/>"#,
    ))
    .unwrap();
    let names: Vec<_> = verbs.iter().map(Verb::name).collect();
    let expected = "Pause Play Dial Dial Refer Connect Redirect Reject Reject Hangup Pause";
    assert_eq!(names.join(" "), expected);
    assert_eq!(verbs[0], Verb::Pause { length_secs: 2 });
    assert_eq!(verbs[10], Verb::Pause { length_secs: 1 });
    let (Verb::Dial(bare), Verb::Dial(number)) = (&verbs[2], &verbs[3]) else {
        panic!("{verbs:?}")
    };
    assert_eq!(bare.target, DialNoun::Number("+1 (555) 123-4567".into()));
    assert_eq!(number.target, DialNoun::Number("+15550002222".into()));
    assert_eq!(number.caller_id.as_deref(), Some("sip:bot@gw"));
    let uri = "sip:front@pbx".to_owned();
    assert_eq!(verbs[4], Verb::Refer { uri });
    let parameters =
        BTreeMap::from([("k", "v & w"), ("empty", "")].map(|(k, v)| (k.into(), v.into())));
    let stream_url = "wss://bot.example/s".to_owned();
    assert_eq!(
        verbs[5],
        Verb::Connect {
            stream_url,
            parameters
        }
    );
    let reasons = [&verbs[7], &verbs[8]].map(|v| format!("{v:?}"));
    assert_eq!(
        reasons,
        [
            r#"Reject { reason: "busy" }"#,
            r#"Reject { reason: "rejected" }"#
        ]
    );
    assert_eq!(parse_twiml("<Response/>"), Ok(vec![]));
    assert_eq!(parse_twiml("<Response>\n</Response>"), Ok(vec![]));
}

#[test]
fn actions_and_unsupported_verbs() {
    let text = doc(
        "<Refer><Sip>sip:x@y</Sip></Refer><Redirect>http://h/n</Redirect>\
                    <Reject reason=\"busy\"/><Hangup/>",
    );
    let expected = vec![
        Action::Refer {
            uri: "sip:x@y".into(),
        },
        Action::Redirect {
            url: "http://h/n".into(),
        },
        Action::Hangup {
            reason: Some("busy".into()),
        },
        Action::Hangup { reason: None },
    ];
    assert_eq!(
        actions_from_twiml(&parse_twiml(&text).unwrap()),
        Ok(expected)
    );
    for (body, name) in [
        ("<Pause/>", "Pause"),
        ("<Play>https://h/a.wav</Play>", "Play"),
        ("<Connect><Stream url=\"ws://h\"/></Connect>", "Connect"),
        ("<Hangup/><Pause/>", "Pause"),
    ] {
        let verbs = parse_twiml(&doc(body)).unwrap();
        let unsupported = Err(TwimlError::Unsupported(name.into()));
        assert_eq!(actions_from_twiml(&verbs), unsupported, "{body}");
    }
}

#[test]
fn gather_collects_dtmf_with_prompts() {
    let verbs = parse_twiml(&doc(
        "<Gather numDigits=\"3\" timeout=\"7\" action=\"https://h/menu\" method=\"GET\"><Play>https://h/a.wav</Play><Pause/></Gather>",
    ))
    .unwrap();
    let [Verb::Gather(gather)] = verbs.as_slice() else {
        panic!("one gather: {verbs:?}")
    };
    assert_eq!(gather.num_digits, Some(3));
    assert_eq!(gather.timeout_secs, 7);
    assert_eq!(gather.finish_on_key, Some('#'));
    assert_eq!(gather.action.as_deref(), Some("https://h/menu"));
    assert!(gather.method_get);
    assert_eq!(gather.prompts.len(), 2);
    let relative = parse_twiml(&doc("<Gather action=\"/menu?step=2\"/>")).unwrap();
    assert!(matches!(&relative[0], Verb::Gather(g) if g.action.as_deref() == Some("/menu?step=2")));
    let plain = parse_twiml(&doc("<Gather finishOnKey=\"\"/>")).unwrap();
    assert!(
        matches!(&plain[0], Verb::Gather(g) if g.finish_on_key.is_none() && g.num_digits.is_none())
    );
    for bad in [
        "<Gather input=\"speech\"/>",
        "<Gather finishOnKey=\"ab\"/>",
        "<Gather><Dial>1</Dial></Gather>",
        "<Gather action=\"ftp://x\"/>",
    ] {
        assert!(parse_twiml(&doc(bad)).is_err(), "{bad}");
    }
}

#[test]
fn numbers_dial_through_a_trunk() {
    let verbs = parse_twiml(&doc(
        "<Dial callerId=\"+15550100\" timeout=\"15\"><Number>+1 (415) 555-0100</Number></Dial>",
    ))
    .unwrap();
    let Ok(actions) = actions_from_twiml(&verbs) else {
        panic!("a number dials")
    };
    let [Action::Dial(target)] = actions.as_slice() else {
        panic!("one dial: {actions:?}")
    };
    assert_eq!(target.number.as_deref(), Some("+14155550100"));
    assert_eq!(target.uri, "tel:+14155550100");
    assert_eq!(target.caller_id.as_deref(), Some("+15550100"));
    assert_eq!(target.timeout_secs, 15);
    let bare = parse_twiml(&doc("<Dial>4155550100</Dial>")).unwrap();
    let Ok(actions) = actions_from_twiml(&bare) else {
        panic!("bare digits dial")
    };
    assert!(matches!(&actions[0], Action::Dial(t) if t.number.as_deref() == Some("4155550100")));
}

#[test]
fn unknown_verbs_and_wrong_roots() {
    let say = err(&doc("<Say>hi</Say>"));
    assert_eq!(say, TwimlError::UnknownVerb("Say".into()));
    assert_eq!(say.to_string(), "unknown verb <Say>");
    assert_eq!(err("<response/>"), TwimlError::WrongRoot("response".into()));
    let dial = err("<Dial><Sip>sip:a@b</Sip></Dial>");
    assert_eq!(dial, TwimlError::WrongRoot("Dial".into()));
    let text = err("<Response/><Response/>").to_string();
    assert!(text.contains("more than one root"), "{text}");
}

#[test]
fn malformed_xml() {
    for text in [
        "",
        "   ",
        "not xml",
        "<Response>",
        "<Response><Dial></Response>",
        "<Response><Hangup></Response>",
        "<Response></Dial></Response>",
        "<Response a=\"1\" a=\"2\"/>",
        "<Response a=1/>",
        "<Response>junk</Response> trailing",
        "<!DOCTYPE r [<!ENTITY x \"y\">]><Response/>",
        "<Response>&x;</Response>",
    ] {
        let result = parse_twiml(text);
        assert!(
            matches!(result, Err(TwimlError::Malformed(_))),
            "{text:?}: {result:?}"
        );
    }
}

/// Element in error, then the body of a `<Response>`.
const INVALID: &str = r#"
    Response  | hello<Hangup/>
    Hangup    | <Hangup><Foo/></Hangup>
    Hangup    | <Hangup>now</Hangup>
    Sip       | <Dial><Sip>sip:a@b<b>x</b></Sip></Dial>
    Dial      | <Dial><Sip>sip:a@b</Sip><Sip>sip:c@d</Sip></Dial>
    Dial      | <Dial><Sip>sip:a@b</Sip><Number>1</Number></Dial>
    Dial      | <Dial><Sip>sip:a@b</Sip>text</Dial>
    Dial      | <Dial><Client>joe</Client></Dial>
    Dial      | <Dial/>
    Sip       | <Dial><Sip>tel:+1555</Sip></Dial>
    Sip       | <Dial><Sip>http://a</Sip></Dial>
    Sip       | <Dial><Sip>sip:</Sip></Dial>
    Sip       | <Dial><Sip>sip:a b@c</Sip></Dial>
    Sip       | <Dial><Sip>sip:a@b>x</Sip></Dial>
    Sip       | <Dial><Sip></Sip></Dial>
    Number    | <Dial><Number>call me</Number></Dial>
    Dial      | <Dial timeout="x"><Sip>sip:a@b</Sip></Dial>
    Dial      | <Dial timeout="0"><Sip>sip:a@b</Sip></Dial>
    Dial      | <Dial timeout="601"><Sip>sip:a@b</Sip></Dial>
    Dial      | <Dial timeLimit="-1"><Sip>sip:a@b</Sip></Dial>
    Dial      | <Dial answerOnBridge="yes"><Sip>sip:a@b</Sip></Dial>
    Dial      | <Dial record="always"><Sip>sip:a@b</Sip></Dial>
    Dial      | <Dial action="ftp://x"><Sip>sip:a@b</Sip></Dial>
    Dial      | <Dial callerId="a&#10;b"><Sip>sip:a@b</Sip></Dial>
    Dial      | <Dial callerId="&lt;x&gt;"><Sip>sip:a@b</Sip></Dial>
    Reject    | <Reject reason="later"/>
    Pause     | <Pause length="soon"/>
    Redirect  | <Redirect>/relative</Redirect>
    Redirect  | <Redirect></Redirect>
    Play      | <Play>file:///etc/passwd</Play>
    Refer     | <Refer><Number>1</Number></Refer>
    Refer     | <Refer/>
    Stream    | <Connect><Stream/></Connect>
    Stream    | <Connect><Stream url="https://x"/></Connect>
    Connect   | <Connect><VirtualAgent/></Connect>
    Stream    | <Connect><Stream url="ws://x"><Foo/></Stream></Connect>
    Parameter | <Connect><Stream url="ws://x"><Parameter value="v"/></Stream></Connect>
"#;

#[test]
fn nested_junk_and_bad_values() {
    for line in INVALID.lines().filter(|l| !l.trim().is_empty()) {
        let (element, body) = line.split_once('|').unwrap();
        match err(&doc(body.trim())) {
            TwimlError::Invalid { element: e, .. } => assert_eq!(e, element.trim(), "{line}"),
            other => panic!("{line}: expected Invalid, got {other:?}"),
        }
    }
}

#[test]
fn limits() {
    let big = doc(&" ".repeat(MAX_TWIML_BYTES));
    assert!(matches!(err(&big), TwimlError::TooLarge { .. }));
    let many = doc(&"<Hangup/>".repeat(MAX_ELEMENTS));
    assert_eq!(err(&many), TwimlError::TooManyElements(MAX_ELEMENTS));
    let fine = doc(&"<Hangup/>".repeat(MAX_ELEMENTS - 1));
    assert_eq!(parse_twiml(&fine).unwrap().len(), MAX_ELEMENTS - 1);
    let deep = format!("<Response>{}", "<Dial>".repeat(MAX_DEPTH));
    assert_eq!(err(&deep), TwimlError::TooDeep(MAX_DEPTH));
    let long = doc(&format!(
        "<Dial><Sip>sip:a@b?X-A={}</Sip></Dial>",
        "x".repeat(MAX_URI_LEN)
    ));
    assert!(matches!(err(&long), TwimlError::Invalid { element, .. } if element == "Sip"));
    assert!(matches!(one("<Hangup/>"), Verb::Hangup));
}

#[test]
fn sip_uri_checks() {
    for good in [
        "sip:a@b",
        "SIP:a@b",
        "sips:b",
        "sip:a@b:5070;transport=tcp?X-A=1",
    ] {
        assert!(is_sip_uri(good), "{good}");
    }
    for bad in [
        "",
        "sip",
        "sip:",
        "sip:a@",
        "sip:;x",
        "tel:1",
        "sip:a\r\n@b",
        "sip:<a>",
    ] {
        assert!(!is_sip_uri(bad), "{bad}");
    }
}
