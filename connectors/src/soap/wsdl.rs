//! The WSDL served at `?wsdl`, so a platform engineer can register the subscriber: one
//! document/literal operation `HIPMessageServer(action, message) → HIPMessageServerResult`,
//! with SOAP 1.1 and SOAP 1.2 bindings, at the URL the request came to.

use super::envelope::escape;

/// The WSDL's target namespace. Callers may use any namespace for the operation; the response
/// echoes theirs.
pub const NAMESPACE: &str = "urn:cem-bridge:HIPMessageServer";

pub fn document(endpoint: &str) -> String {
    let url = escape(endpoint);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:soap12="http://schemas.xmlsoap.org/wsdl/soap12/" xmlns:s="http://www.w3.org/2001/XMLSchema" xmlns:tns="{NAMESPACE}" targetNamespace="{NAMESPACE}" name="HIPMessageServer">
  <wsdl:types>
    <s:schema elementFormDefault="qualified" targetNamespace="{NAMESPACE}">
      <s:element name="HIPMessageServer">
        <s:complexType><s:sequence>
          <s:element minOccurs="1" maxOccurs="1" name="action" type="s:string"/>
          <s:element minOccurs="1" maxOccurs="1" name="message" type="s:string"/>
        </s:sequence></s:complexType>
      </s:element>
      <s:element name="HIPMessageServerResponse">
        <s:complexType><s:sequence>
          <s:element minOccurs="1" maxOccurs="1" name="HIPMessageServerResult" type="s:string"/>
        </s:sequence></s:complexType>
      </s:element>
    </s:schema>
  </wsdl:types>
  <wsdl:message name="HIPMessageServerSoapIn"><wsdl:part name="parameters" element="tns:HIPMessageServer"/></wsdl:message>
  <wsdl:message name="HIPMessageServerSoapOut"><wsdl:part name="parameters" element="tns:HIPMessageServerResponse"/></wsdl:message>
  <wsdl:portType name="HIPMessageServerPortType">
    <wsdl:operation name="HIPMessageServer">
      <wsdl:documentation>action: the 互联互通 service code (S0023, S0024, S0026, S0032 …); message: the HL7 v3 XML. Answers an MCCI_IN000002UV01 acknowledgement (AA / AE) once the message is durable.</wsdl:documentation>
      <wsdl:input message="tns:HIPMessageServerSoapIn"/>
      <wsdl:output message="tns:HIPMessageServerSoapOut"/>
    </wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="HIPMessageServerSoap" type="tns:HIPMessageServerPortType">
    <soap:binding transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="HIPMessageServer">
      <soap:operation soapAction="{NAMESPACE}/HIPMessageServer" style="document"/>
      <wsdl:input><soap:body use="literal"/></wsdl:input>
      <wsdl:output><soap:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:binding name="HIPMessageServerSoap12" type="tns:HIPMessageServerPortType">
    <soap12:binding transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="HIPMessageServer">
      <soap12:operation soapAction="{NAMESPACE}/HIPMessageServer" style="document"/>
      <wsdl:input><soap12:body use="literal"/></wsdl:input>
      <wsdl:output><soap12:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="HIPMessageServer">
    <wsdl:port name="HIPMessageServerSoap" binding="tns:HIPMessageServerSoap"><soap:address location="{url}"/></wsdl:port>
    <wsdl:port name="HIPMessageServerSoap12" binding="tns:HIPMessageServerSoap12"><soap12:address location="{url}"/></wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"#
    )
}
